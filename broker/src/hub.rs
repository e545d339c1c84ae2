//! The hub: a sharded registry of channel subscribers that turns one publication into
//! deliveries. A delivery is a push of shared bytes onto a peer's [`Outbound`] queue;
//! each session's writer does the socket work, except on a channel whose recent rate is
//! light ([`load`]), where a push from a session may write to an idle subscriber's socket
//! itself (see [`crate::outbound`]).
//!
//! Locks: a channel's shard lock is held while its stream advances (history append) and
//! its subscribers are given the frame, so every subscriber sees a channel's publications
//! in offset order, and a subscribe (with its recovery read) is atomic with respect to
//! publications. Lock order: hub shard → history shard → outbound queue. Nothing awaits
//! while holding any of them.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use indexmap::IndexMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::channel::{ChannelName, NameMap, Namespace};
use crate::history::{HistoryPolicy, HistoryStore, Page, Position, Query, ReadError, Sequenced};
use crate::limits::RateLimits;
use crate::outbound::{self, Push};
use crate::protocol::{self, EncodedFrame, PublicationFields, StreamPosition};

mod conn;
mod load;
mod members;

pub use conn::{ClientId, ConnHandle};

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    channels: NameMap<ChannelName, Subscribers>,
}

/// A channel's subscribers here (by connection key), and its recent rate.
#[derive(Default)]
struct Subscribers {
    conns: IndexMap<u64, Arc<ConnHandle>>,
    load: load::Load,
}

impl Deref for Subscribers {
    type Target = IndexMap<u64, Arc<ConnHandle>>;

    fn deref(&self) -> &Self::Target {
        &self.conns
    }
}

impl DerefMut for Subscribers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conns
    }
}

impl Subscribers {
    /// Runs `each` over the subscribers (with their index), counting the deliveries in
    /// the channel's rate: a busy or large channel ([`load`]) queues every push, even
    /// when the pushing session would write directly.
    fn fan_out(&mut self, now_ms: u64, mut each: impl FnMut(usize, &Arc<ConnHandle>)) {
        self.fan_out_deferring(now_ms, |i, peer, _| each(i, peer));
    }

    /// [`Subscribers::fan_out`], giving `each` the pushing thread's mode when a
    /// publication's pushes may be deferred ([`outbound::Outbound::push_deferred`]): the
    /// channel is large and quiet, or it is not large and the pushing session is
    /// handling a read that brought several frames ([`outbound::deferral`]).
    fn fan_out_deferring(
        &mut self,
        now_ms: u64,
        mut each: impl FnMut(usize, &Arc<ConnHandle>, Option<outbound::DirectMode>),
    ) {
        let verdict = self.load.verdict(now_ms, self.conns.len());
        let conns = &self.conns;
        // Read here: the fan-out below turns direct writes off for a large channel.
        let defer = match verdict {
            load::Verdict::Large => outbound::deferral(true),
            // A read's worth of frames per subscriber, written by the publishing thread.
            load::Verdict::Direct | load::Verdict::Busy { large: false } => {
                outbound::deferral(false)
            }
            load::Verdict::Busy { large: true } => None,
        };
        let mut run = || {
            for (i, peer) in conns.values().enumerate() {
                each(i, peer, defer);
            }
        };
        if verdict == load::Verdict::Direct {
            run();
        } else {
            outbound::without_direct_writes(run);
        }
    }
}

/// A publication to make.
pub struct NewPublication<'a> {
    pub channel: &'a ChannelName,
    pub user: Option<&'a str>,
    pub data: &'a RawValue,
    pub meta: Option<&'a RawValue>,
    /// When the pipeline accepted it, for a sampled publication
    /// ([`crate::publish::latency_probe`]): the last subscriber's writer reports the latency.
    pub probe: Option<std::time::Instant>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The publication's offset (0 in a namespace without history).
    pub offset: u64,
    /// Subscribers the frame was queued for.
    pub delivered: usize,
    /// Subscribers cut off as slow consumers by this publication.
    pub overflowed: usize,
}

impl Published {
    /// A repeated idempotency key: the first publication's offset, delivered to nobody.
    pub fn repeat(offset: u64) -> Self {
        Self {
            offset,
            delivered: 0,
            overflowed: 0,
        }
    }
}

/// Why a subscribe did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("already subscribed to {0}")]
    AlreadySubscribed(ChannelName),
}

/// Where a channel's stream stood when a subscriber joined, and what its `recover` asked
/// for (handed to the subscriber's `on_joined` under the channel's lock).
#[derive(Debug)]
pub struct Joined {
    /// `None` in a namespace without history.
    pub position: Option<Position>,
    /// Whether `recover` was served exactly.
    pub recovered: bool,
    /// The missed publications (`message` frames), oldest first.
    pub publications: Vec<EncodedFrame>,
    /// `Some(offset)` when a paged recovery was cut at `limits.max_reply_bytes`: the
    /// offset of the last publication given, to read on from with `history` `since`.
    pub next: Option<u64>,
}

pub fn policy(ns: &Namespace) -> HistoryPolicy {
    HistoryPolicy {
        size: ns.config.history_size,
        ttl_ms: ns.config.history_ttl_secs * 1000,
    }
}

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    history: Arc<dyn HistoryStore>,
    max_reply_bytes: usize,
    /// Caps the `join`/`leave` pushes of each channel (`rate_limits.channel_join_leave_*`).
    join_leave: Option<JoinLeaveCap>,
    /// Where this node's `join`/`leave` pushes also go (a cluster's other nodes).
    announce: Option<Arc<dyn Announce>>,
}

/// Hands this node's `join`/`leave` pushes to other nodes. Called under the channel's
/// lock: it must not block (a cluster link queues the frame for its writer).
pub trait Announce: Send + Sync + 'static {
    fn announce(&self, channel: &ChannelName, frame: &EncodedFrame);
}

/// A publication already sequenced by the channel's log (a cluster's JetStream stream, or
/// a namespace without history on another node): the hub only stores it in its replica
/// and delivers it. Plugins, limits and idempotency ran once, where it was accepted.
pub struct Delivery {
    /// `None` in a namespace without history.
    pub epoch: Option<Arc<str>>,
    pub offset: u64,
    pub ts_ms: u64,
    /// The `message` push, encoded once on this node.
    pub frame: EncodedFrame,
}

/// The per-channel cap on `join`/`leave` pushes, and where skipped ones are counted.
pub struct JoinLeaveCap {
    pub limits: Arc<RateLimits>,
    pub skipped: prometheus::IntCounter,
}

impl Hub {
    pub fn new(history: Arc<dyn HistoryStore>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            history,
            max_reply_bytes: 1 << 20,
            join_leave: None,
            announce: None,
        }
    }

    /// Sends this node's `join`/`leave` pushes to `announce` too (a cluster link).
    pub fn with_announce(mut self, announce: Arc<dyn Announce>) -> Self {
        self.announce = Some(announce);
        self
    }

    /// Caps each channel's `join`/`leave` pushes: past the rate they are skipped (and
    /// counted), so a few clients toggling a subscription cannot flood a big channel.
    pub fn with_join_leave_cap(mut self, cap: JoinLeaveCap) -> Self {
        self.join_leave = Some(cap);
        self
    }

    /// Whether a `join`/`leave` push for `channel` may go out now (else it is counted).
    fn join_leave_allowed(&self, channel: &ChannelName) -> bool {
        let Some(cap) = &self.join_leave else {
            return true;
        };
        let allowed = cap.limits.join_leave_allowed(channel);
        if !allowed {
            cap.skipped.inc();
        }
        allowed
    }

    /// Bounds the publications (or presence entries) of one reply (`limits.max_reply_bytes`).
    pub fn with_max_reply_bytes(mut self, max_reply_bytes: usize) -> Self {
        self.max_reply_bytes = max_reply_bytes;
        self
    }

    pub fn max_reply_bytes(&self) -> usize {
        self.max_reply_bytes
    }

    pub fn history(&self) -> &Arc<dyn HistoryStore> {
        &self.history
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<Shard> {
        &self.shards[channel.shard(SHARDS)]
    }

    /// Subscribes `peer`. `on_joined` runs under the channel's lock with where the stream
    /// stands (and what `recover` asked for), so what it queues (the session's
    /// `subscribed` reply) comes before any later publication of the channel. `paged`:
    /// the recovered publications go into one reply, so they are cut at
    /// `limits.max_reply_bytes` (otherwise they are queued as separate pushes, all of them).
    /// Returns the channel's name as the hub keeps it, for the session to keep too (one
    /// allocation per channel, not per subscriber).
    pub fn subscribe(
        &self,
        ns: &Namespace,
        channel: &ChannelName,
        peer: &Arc<ConnHandle>,
        recover: Option<&StreamPosition>,
        paged: bool,
        on_joined: impl FnOnce(Joined),
    ) -> Result<ChannelName, SubscribeError> {
        let mut shard = self.shard(channel).lock();
        let entry = shard.channels.entry(channel.clone());
        // The map's own key when the channel has subscribers here already.
        let kept = entry.key().clone();
        let subs = entry.or_default();
        if subs.contains_key(&peer.key) {
            return Err(SubscribeError::AlreadySubscribed(channel.clone()));
        }
        let max_bytes = if paged {
            self.max_reply_bytes
        } else {
            usize::MAX
        };
        on_joined(self.join_position(ns, channel, recover, max_bytes));
        let others = !subs.is_empty() || self.announce.is_some();
        if ns.config.join_leave && others && self.join_leave_allowed(channel) {
            let join = protocol::encode_join(
                channel.as_str(),
                &peer.client,
                &peer.user,
                peer.info_or_empty(),
            );
            subs.fan_out(protocol::now_ms(), |_, other| {
                other.outbound.push(join.clone());
            });
            if let Some(announce) = &self.announce {
                announce.announce(channel, &join);
            }
        }
        subs.insert(peer.key, peer.clone());
        Ok(kept)
    }

    /// Where a subscriber joins the stream, with its recovery read (under the channel's lock).
    fn join_position(
        &self,
        ns: &Namespace,
        channel: &ChannelName,
        recover: Option<&StreamPosition>,
        max_bytes: usize,
    ) -> Joined {
        let not_recovered = |position| Joined {
            position,
            recovered: false,
            publications: Vec::new(),
            next: None,
        };
        if !ns.keeps_history() {
            return not_recovered(None);
        }
        let Some(since) = recover else {
            return not_recovered(Some(self.history.position(channel)));
        };
        let query = Query::Since {
            since,
            limit: usize::MAX,
            max_bytes,
        };
        match self
            .history
            .read(channel, policy(ns), protocol::now_ms(), query)
        {
            Ok(Page {
                position,
                publications,
                next,
            }) => Joined {
                position: Some(position),
                recovered: true,
                publications,
                next,
            },
            Err(_) => not_recovered(Some(self.history.position(channel))),
        }
    }

    /// Removes `peer` from the channel; returns whether it was subscribed.
    pub fn unsubscribe(&self, ns: &Namespace, channel: &ChannelName, peer: &ConnHandle) -> bool {
        let mut shard = self.shard(channel).lock();
        let Some(subs) = shard.channels.get_mut(channel) else {
            return false;
        };
        if subs.swap_remove(&peer.key).is_none() {
            return false;
        }
        let alone = subs.is_empty();
        if alone {
            shard.channels.remove(channel);
            if self.announce.is_none() {
                return true;
            }
        }
        if ns.config.join_leave && self.join_leave_allowed(channel) {
            let leave = protocol::encode_leave(channel.as_str(), &peer.client, &peer.user);
            if let Some(subs) = shard.channels.get_mut(channel) {
                subs.fan_out(protocol::now_ms(), |_, other| {
                    other.outbound.push(leave.clone());
                });
            }
            if let Some(announce) = &self.announce {
                announce.announce(channel, &leave);
            }
        }
        true
    }

    /// The deliver-only entry: stores a publication sequenced elsewhere in this node's
    /// replica of the channel's stream and queues it for the channel's subscribers here,
    /// under the channel's lock (so a subscribe's recovery and the live stream meet
    /// without a gap or a repeat). Returns the subscribers it was queued for.
    pub fn deliver(&self, ns: &Namespace, channel: &ChannelName, delivery: Delivery) -> usize {
        let mut shard = self.shard(channel).lock();
        if let Some(epoch) = delivery.epoch
            && ns.keeps_history()
        {
            let sequenced = Sequenced {
                epoch,
                offset: delivery.offset,
                ts_ms: delivery.ts_ms,
                frame: delivery.frame.clone(),
            };
            self.history
                .insert(channel, policy(ns), protocol::now_ms(), sequenced);
        }
        let Some(subs) = shard.channels.get_mut(channel) else {
            return 0;
        };
        let volatile = ns.volatile();
        let mut delivered = 0;
        subs.fan_out(protocol::now_ms(), |_, peer| {
            if let Push::Queued = peer.push(&delivery.frame, volatile) {
                delivered += 1;
            }
        });
        delivered
    }

    /// Closes the connections of the channel's subscribers here (after what they have
    /// queued); returns how many.
    pub fn disconnect_subscribers(
        &self,
        channel: &ChannelName,
        disconnect: &protocol::Disconnect,
    ) -> usize {
        let shard = self.shard(channel).lock();
        let Some(subs) = shard.channels.get(channel) else {
            return 0;
        };
        for peer in subs.values() {
            peer.outbound.close(disconnect.clone());
        }
        subs.len()
    }

    /// Queues a frame for the channel's subscribers here (another node's `join`/`leave`).
    pub fn push(&self, channel: &ChannelName, frame: &EncodedFrame) {
        let mut shard = self.shard(channel).lock();
        if let Some(subs) = shard.channels.get_mut(channel) {
            subs.fan_out(protocol::now_ms(), |_, peer| {
                peer.outbound.push(frame.clone());
            });
        }
    }

    /// Runs `f` under the channel's lock (a cluster link restores its replica so, atomic
    /// with deliveries and subscribes).
    pub fn with_channel_locked<T>(&self, channel: &ChannelName, f: impl FnOnce() -> T) -> T {
        let _order = self.shard(channel).lock();
        f()
    }

    /// Publishes: assigns the offset, encodes the `message` push once and queues the same
    /// bytes for every subscriber, all under the channel's shard lock (per-channel order).
    pub fn publish(&self, ns: &Namespace, publication: NewPublication<'_>) -> Published {
        let now = protocol::now_ms();
        let mut encode = |offset| {
            protocol::encode_message(&PublicationFields {
                channel: publication.channel.as_str(),
                offset,
                ts: now,
                user: publication.user,
                data: publication.data,
                meta: publication.meta,
            })
        };
        let mut shard = self.shard(publication.channel).lock();
        let (offset, frame) = if ns.keeps_history() {
            let (position, frame) =
                self.history
                    .append(publication.channel, policy(ns), now, &mut encode);
            (position.offset, frame)
        } else {
            (0, encode(0))
        };
        let mut published = Published {
            offset,
            delivered: 0,
            overflowed: 0,
        };
        if let Some(subs) = shard.channels.get_mut(publication.channel) {
            let last = subs.len().saturating_sub(1);
            let volatile = ns.volatile();
            subs.fan_out_deferring(now, |i, peer, defer| {
                let pushed = if volatile {
                    peer.push(&frame, true)
                } else if defer.is_some_and(|m| m.may_defer(&peer.outbound)) {
                    let probe = publication.probe.filter(|_| i == last);
                    let holder = || Arc::clone(peer) as Arc<dyn outbound::HasOutbound>;
                    peer.outbound.push_deferred(frame.clone(), probe, holder)
                } else if i == last
                    && let Some(accepted_at) = publication.probe
                {
                    peer.outbound.push_probed(frame.clone(), accepted_at)
                } else {
                    peer.outbound.push(frame.clone())
                };
                match pushed {
                    Push::Queued => published.delivered += 1,
                    Push::Overflow => published.overflowed += 1,
                    Push::Closed => {}
                }
            });
        }
        published
    }

    /// Reads history (`history` requests and the server API).
    pub fn history_read(
        &self,
        ns: &Namespace,
        channel: &ChannelName,
        query: Query<'_>,
    ) -> Result<Option<Page>, ReadError> {
        if !ns.keeps_history() {
            return Ok(None);
        }
        let _order = self.shard(channel).lock();
        self.history
            .read(channel, policy(ns), protocol::now_ms(), query)
            .map(Some)
    }

    /// The stream's top, `None` in a namespace without history.
    pub fn position(&self, ns: &Namespace, channel: &ChannelName) -> Option<Position> {
        ns.keeps_history().then(|| self.history.position(channel))
    }
}

#[cfg(test)]
mod tests;
