//! Channel links: this node's NATS interest in a channel, held while it has local
//! subscribers (and `cluster.linger_ms` after the last one leaves, or after a read).
//!
//! A link is one task: it subscribes to `P.d.<ns>.<channel>` on the delivery connection,
//! then (history namespaces) loads the channel's stream into the node's replica once,
//! and from then on hands every message to [`Hub::deliver`](crate::hub::Hub::deliver) in
//! stream order. Each republished message names the previous sequence of its channel:
//! when that is past what the replica holds, something was missed (a reconnect, a slow
//! consumer) and the link reads the stream from its top before it goes on. So a
//! thousand subscribers recovering one channel on a node cost one stream read, and none
//! of them sees a gap.
//!
//! Locks: links map → hub shard → history shard. The link task is the only writer of its
//! channel's replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::streams::{open_stream, read, still_stored};
use super::{Cluster, unavailable, wire};
use crate::channel::{ChannelName, Namespace};
use crate::history::{Restored, Sequenced};
use crate::hub::{Delivery, policy};
use crate::node::Node;
use crate::protocol::{self, CloseCode, Disconnect, EncodedFrame, PublicationFields, now_ms};
use crate::sequencer::Prepare;

type Ready = Option<Result<(), String>>;

/// Every channel link of this node.
#[derive(Default)]
pub(super) struct Links {
    map: Mutex<HashMap<ChannelName, Arc<Link>>>,
    /// Delivery-connection subscription ids → channel, for slow-consumer events. The
    /// client numbers subscriptions 1, 2, 3… in the order they are made, and only links
    /// subscribe on that connection, so subscribing is serialized here.
    sids: Mutex<HashMap<u64, ChannelName>>,
    subscribing: tokio::sync::Mutex<u64>,
}

struct Link {
    ns: Arc<Namespace>,
    channel: ChannelName,
    ready: watch::Receiver<Ready>,
    /// When a subscribe or read last wanted the channel (Unix ms).
    wanted_ms: AtomicU64,
    /// Read the stream again (a reconnect or a slow consumer).
    resync: Notify,
    /// NATS dropped messages of this link (a slow consumer, or a reconnect).
    dropped: AtomicBool,
}

/// Where a history link's replica stands.
struct Position {
    epoch: Arc<str>,
    top: u64,
    /// The offset of the channel's last publication in the replica (0: none). `top`
    /// may be past it (everything up to `top` is known).
    last_own: u64,
    /// Messages that came before one they follow (by their `Nats-Last-Sequence`), by
    /// sequence, until it comes (or [`REORDER_WAIT`] passes and the stream is read).
    early: BTreeMap<u64, (u64, Bytes)>,
    /// The payload bytes `early` holds.
    early_bytes: usize,
    early_since: Option<tokio::time::Instant>,
    /// When to read the stream for what the held messages follow.
    retry_at: Option<tokio::time::Instant>,
    /// NATS dropped messages of this link (a slow consumer, a reconnect): what is missing
    /// will not come late.
    dropped: bool,
}

impl Position {
    fn new(epoch: Arc<str>, top: u64, last_own: u64) -> Self {
        Self {
            epoch,
            top,
            last_own,
            early: BTreeMap::new(),
            early_bytes: 0,
            early_since: None,
            retry_at: None,
            dropped: false,
        }
    }
}

/// How long a message may wait for the one before it before the stream is read.
const REORDER_WAIT: Duration = Duration::from_millis(100);
/// How long a missing publication may stay missing when the stream cannot show that
/// nothing was lost (its channel is at `history_size`) before the subscribers are told
/// to recover. Core NATS loses nothing on a connection without telling (a slow consumer
/// event, a disconnect: both mark the link `dropped`, and then nobody waits), but a
/// server under load may republish a publication well after the ones stored after it
/// (its publishers' connections store concurrently): it is waited for.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// Early messages (and their payload bytes) held at most while one is missing; past
/// either the stream is read at once.
const MAX_EARLY: usize = 65_536;
const MAX_EARLY_BYTES: usize = 16 << 20;

impl Position {
    /// Whether the held messages are past their bounds.
    fn holds_too_much(&self) -> bool {
        self.early.len() > MAX_EARLY || self.early_bytes > MAX_EARLY_BYTES
    }

    fn hold(&mut self, seq: u64, last: u64, payload: Bytes) {
        self.early_bytes += payload.len();
        if let Some((_, old)) = self.early.insert(seq, (last, payload)) {
            self.early_bytes -= old.len();
        }
    }
}

impl Links {
    /// Gets the channel's link (starting it when there is none) and, until its stream is
    /// loaded, a wait for it.
    pub(super) fn prepare(
        &self,
        cluster: &Cluster,
        node: &Arc<Node>,
        ns: &Arc<Namespace>,
        channel: &ChannelName,
    ) -> Prepare {
        let link = {
            let mut map = self.map.lock();
            match map.get(channel) {
                Some(link) => link.clone(),
                None => {
                    let cluster = cluster.this()?;
                    let (tx, rx) = watch::channel(None);
                    let link = Arc::new(Link {
                        ns: ns.clone(),
                        channel: channel.clone(),
                        ready: rx,
                        wanted_ms: AtomicU64::new(now_ms()),
                        resync: Notify::new(),
                        dropped: AtomicBool::new(false),
                    });
                    map.insert(channel.clone(), link.clone());
                    cluster.metrics.links.inc();
                    tokio::spawn(run(cluster, node.clone(), link.clone(), tx));
                    link
                }
            }
        };
        link.wanted_ms.store(now_ms(), Ordering::Relaxed);
        if let Some(Ok(())) = *link.ready.borrow() {
            return None;
        }
        // A history channel this node does not serve yet needs its stream: without NATS
        // the answer is now, not after the timeout.
        if ns.keeps_history()
            && let Some(reason) = cluster.not_ready()
        {
            let err = unavailable(format!(
                "this channel's history cannot be read now: {reason}; retry shortly"
            ));
            return Some(Box::pin(async move { Err(err) }));
        }
        let mut ready = link.ready.clone();
        let timeout = cluster.timeout();
        Some(Box::pin(async move {
            let waited = tokio::time::timeout(timeout, ready.wait_for(Option::is_some)).await;
            match waited {
                Ok(Ok(r)) => match &*r {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(unavailable(e.clone())),
                    None => unreachable!("waited for Some"),
                },
                Ok(Err(_)) => Err(unavailable("the cluster link stopped; retry")),
                Err(_) => Err(unavailable(format!(
                    "this channel's stream could not be read from NATS within {} ms; retry shortly",
                    timeout.as_millis()
                ))),
            }
        }))
    }

    /// Every link reads its stream again (after a reconnect: what NATS sent meanwhile
    /// is lost, so a missing publication is not waited for).
    pub(super) fn resync_all(&self) {
        for link in self.map.lock().values() {
            // (Without history nothing can be read again; its subscribers stay.)
            if link.ns.keeps_history() {
                link.dropped.store(true, Ordering::Release);
            }
            link.resync.notify_one();
        }
    }

    /// NATS dropped messages for subscription `sid`: its link catches up (or, without
    /// history, tells its subscribers to recover). Returns the channel.
    pub(super) fn on_slow_consumer(&self, sid: u64) -> Option<ChannelName> {
        let channel = self.sids.lock().get(&sid).cloned();
        let map = self.map.lock();
        match channel.as_ref().and_then(|c| map.get(c)) {
            Some(link) => {
                link.dropped.store(true, Ordering::Release);
                link.resync.notify_one();
            }
            // Not known: every link checks itself.
            None => {
                for link in map.values() {
                    link.dropped.store(true, Ordering::Release);
                    link.resync.notify_one();
                }
            }
        }
        channel
    }

    /// Ends the link when nobody here needs it any more; under the map's lock, so no
    /// subscribe can start meanwhile. Its replica is dropped first.
    fn try_end(&self, node: &Node, link: &Link, linger_ms: u64, force: bool) -> bool {
        let mut map = self.map.lock();
        let wanted = now_ms().saturating_sub(link.wanted_ms.load(Ordering::Relaxed)) < linger_ms;
        if !force && (wanted || node.hub.has_subscribers(&link.channel)) {
            return false;
        }
        node.hub.history().forget(&link.channel);
        map.remove(&link.channel);
        true
    }
}

/// A link's task. See the module doc.
async fn run(cluster: Arc<Cluster>, node: Arc<Node>, link: Arc<Link>, ready: watch::Sender<Ready>) {
    let ended = serve(&cluster, &node, &link, &ready).await;
    if let Err(e) = ended {
        tracing::warn!(channel = %link.channel, error = %e, "Channel link failed");
        let _ = ready.send(Some(Err(format!(
            "this channel cannot be served from the cluster now ({e}); retry shortly"
        ))));
        cluster.links.try_end(&node, &link, 0, true);
    }
    cluster.metrics.links.dec();
}

async fn serve(
    cluster: &Arc<Cluster>,
    node: &Arc<Node>,
    link: &Arc<Link>,
    ready: &watch::Sender<Ready>,
) -> anyhow::Result<()> {
    let subject = cluster
        .subjects
        .delivered(&link.ns.name, link.channel.as_str());
    let (mut sub, sid) = {
        let mut next = cluster.links.subscribing.lock().await;
        let sub = cluster.delivery.subscribe(subject).await?;
        *next += 1;
        cluster
            .links
            .sids
            .lock()
            .insert(*next, link.channel.clone());
        (sub, *next)
    };
    // NATS has the SUB before the stream is read or a subscriber joins, so nothing
    // published after the subscriber was told `subscribed` misses this node (without
    // NATS the client sends it once it is back, and the link reads the stream again).
    cluster.delivery_barrier().await;
    let result = async {
        let mut position = match link.ns.keeps_history() {
            true => Some(load(cluster, node, link).await?),
            false => None,
        };
        let _ = ready.send(Some(Ok(())));
        let linger = cluster.config.linger_ms;
        let mut tick = tokio::time::interval(Duration::from_millis((linger / 2).max(100)));
        let mut behind = false;
        loop {
            let reorder = position
                .as_ref()
                .and_then(|p| p.retry_at);
            tokio::select! {
                _ = cluster.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(reorder.unwrap_or_else(tokio::time::Instant::now)), if reorder.is_some() => {
                    behind = true;
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    cluster.metrics.messages.with_label_values(&["in"]).inc();
                    behind |= !on_message(cluster, node, link, position.as_mut(), msg).await;
                }
                _ = link.resync.notified() => behind = true,
                _ = tick.tick() => {
                    if cluster.links.try_end(node, link, linger, false) {
                        return Ok(());
                    }
                }
            }
            if behind {
                behind = !catch_up(cluster, node, link, position.as_mut()).await;
            }
        }
    }
    .await;
    cluster.links.sids.lock().remove(&sid);
    let _ = sub.unsubscribe().await;
    result
}

/// Handles one message; `false` when the link fell behind (it must catch up).
async fn on_message(
    cluster: &Cluster,
    node: &Node,
    link: &Link,
    position: Option<&mut Position>,
    msg: async_nats::Message,
) -> bool {
    let headers = msg.headers.as_ref();
    if headers.is_some_and(|h| h.get(wire::PUSH_HEADER).is_some()) {
        match EncodedFrame::from_utf8(msg.payload) {
            Ok(frame) => node.hub.push(&link.channel, &frame),
            Err(_) => cluster.metrics.errors.with_label_values(&["decode"]).inc(),
        }
        return true;
    }
    let Some(position) = position else {
        deliver(cluster, node, link, None, 0, &msg.payload);
        return true;
    };
    let number = |name| {
        headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse::<u64>().ok())
    };
    let (Some(seq), Some(last)) = (number(NATS_SEQUENCE), number(NATS_LAST_SEQUENCE)) else {
        cluster.metrics.errors.with_label_values(&["decode"]).inc();
        return true;
    };
    if seq <= position.top {
        return true;
    }
    if last > position.top {
        // The publication before this one has not come (yet): hold this one.
        position.hold(seq, last, msg.payload);
        if position.early_since.is_none() {
            let now = tokio::time::Instant::now();
            position.early_since = Some(now);
            position.retry_at = Some(now + REORDER_WAIT);
        }
        return !position.holds_too_much();
    }
    deliver(
        cluster,
        node,
        link,
        Some(&position.epoch),
        seq,
        &msg.payload,
    );
    position.top = seq;
    position.last_own = seq;
    deliver_early(cluster, node, link, position);
    true
}

/// Delivers the held messages that now follow the replica's top.
fn deliver_early(cluster: &Cluster, node: &Node, link: &Link, position: &mut Position) {
    while let Some(entry) = position.early.first_entry() {
        let (seq, (last, _)) = (*entry.key(), entry.get());
        if seq <= position.top {
            position.early_bytes -= entry.remove().1.len();
            continue;
        }
        if *last > position.top {
            break;
        }
        let (_, payload) = entry.remove();
        position.early_bytes -= payload.len();
        deliver(cluster, node, link, Some(&position.epoch), seq, &payload);
        position.top = seq;
        position.last_own = seq;
    }
    if position.early.is_empty() {
        position.early_since = None;
        position.retry_at = None;
    }
}

/// Encodes the `message` push once and hands it to the hub.
fn deliver(
    cluster: &Cluster,
    node: &Node,
    link: &Link,
    epoch: Option<&Arc<str>>,
    offset: u64,
    payload: &[u8],
) {
    let Some(frame) = encode(cluster, link, offset, payload) else {
        return;
    };
    let delivery = Delivery {
        epoch: epoch.cloned(),
        offset,
        ts_ms: frame.1,
        frame: frame.0,
    };
    let delivered = node.hub.deliver(&link.ns, &link.channel, delivery);
    node.metrics.delivered(delivered as u64);
}

fn encode(
    cluster: &Cluster,
    link: &Link,
    offset: u64,
    payload: &[u8],
) -> Option<(EncodedFrame, u64)> {
    match wire::decode(payload) {
        Ok(w) => {
            let frame = protocol::encode_message(&PublicationFields {
                channel: link.channel.as_str(),
                offset,
                ts: w.t,
                user: w.u,
                data: w.d,
                meta: w.m,
            });
            Some((frame, w.t))
        }
        Err(e) => {
            cluster.metrics.errors.with_label_values(&["decode"]).inc();
            tracing::warn!(channel = %link.channel, error = %e, "A publication from NATS was not understood; skipped");
            None
        }
    }
}

/// Loads the channel's stream into the replica (under the channel's lock).
async fn load(cluster: &Cluster, node: &Node, link: &Link) -> anyhow::Result<Position> {
    let (stream, epoch, last) = open_stream(cluster, &link.ns.name).await?;
    let subject = cluster
        .subjects
        .stored(&link.ns.name, link.channel.as_str());
    let read = read(cluster, &stream, subject, None).await?;
    // Read after the messages: what was dropped since is below it (retention drops the
    // oldest first), so a recovery from below it is refused rather than given a gap.
    let first = stream.get_info().await?.state.first_sequence;
    let size = link.ns.config.history_size;
    let floor = match read.first() {
        Some(&(seq, _)) if read.len() >= size => seq,
        _ => first.saturating_sub(1),
    };
    let top = read.last().map_or(0, |&(seq, _)| seq).max(last);
    let publications = read
        .iter()
        .filter_map(|(seq, payload)| {
            let (frame, ts_ms) = encode(cluster, link, *seq, payload)?;
            Some(Sequenced {
                epoch: epoch.clone(),
                offset: *seq,
                ts_ms,
                frame,
            })
        })
        .collect();
    let restored = Restored {
        epoch: epoch.clone(),
        floor,
        top,
        publications,
    };
    let hub = &node.hub;
    hub.with_channel_locked(&link.channel, || {
        hub.history()
            .restore(&link.channel, policy(&link.ns), now_ms(), restored)
    });
    let last_own = read.last().map_or(0, |&(seq, _)| seq);
    Ok(Position::new(epoch, top, last_own))
}

/// Reads what the replica misses from the stream and delivers it, in order; `false`
/// when NATS could not answer (tried again on the next message, reconnect or tick).
async fn catch_up(
    cluster: &Cluster,
    node: &Node,
    link: &Link,
    position: Option<&mut Position>,
) -> bool {
    let dropped = link.dropped.swap(false, Ordering::AcqRel);
    let Some(position) = position else {
        if dropped {
            // Nothing to read again without history: the subscribers are told to recover.
            force_recover(cluster, node, link);
        }
        return true;
    };
    position.dropped |= dropped;
    cluster.metrics.resyncs.inc();
    let caught_up = async {
        let (stream, epoch, last) = open_stream(cluster, &link.ns.name).await?;
        if epoch != position.epoch {
            // The stream was made anew: offsets start over, so subscribers start over.
            force_recover(cluster, node, link);
            *position = load(cluster, node, link).await?;
            return Ok(());
        }
        let subject = cluster
            .subjects
            .stored(&link.ns.name, link.channel.as_str());
        let missed = read(cluster, &stream, subject.clone(), Some(position.top + 1)).await?;
        // Retention drops the oldest first: below a full subject, or below the stream's
        // first message, a publication after the replica's top may be gone, unless the
        // channel's last publication this node has is still stored (then everything
        // after it is).
        let first = stream.get_info().await?.state.first_sequence;
        tracing::debug!(channel = %link.channel, top = position.top, read = missed.len(), held = position.early.len(), "Catching up from the stream");
        let suspect = missed.len() >= link.ns.config.history_size || first > position.top + 1;
        if suspect && !still_stored(&stream, position.last_own, &subject).await {
            let may_come = !position.dropped && !position.holds_too_much();
            if let Some(since) = position.early_since
                && may_come
                && since.elapsed() < GIVE_UP_AFTER
            {
                // It may yet come, and reading again cannot show it: hold on until it
                // does or the wait is over.
                position.retry_at = Some(since + GIVE_UP_AFTER);
                return Ok(());
            }
            force_recover(cluster, node, link);
            *position = load(cluster, node, link).await?;
            return Ok(());
        }
        for (seq, payload) in missed {
            if seq > position.top {
                deliver(cluster, node, link, Some(&epoch), seq, &payload);
                position.top = seq;
                position.last_own = seq;
            }
        }
        position.top = position.top.max(last);
        deliver_early(cluster, node, link, position);
        // What is still held follows a message the stream did not have when read: it
        // is read again after the next wait.
        position.retry_at = None;
        position.dropped = false;
        if !position.early.is_empty() {
            let now = tokio::time::Instant::now();
            position.early_since = Some(now);
            position.retry_at = Some(now + REORDER_WAIT);
        }
        anyhow::Ok(())
    }
    .await;
    match caught_up {
        Ok(()) => true,
        Err(e) => {
            cluster
                .metrics
                .errors
                .with_label_values(&["jetstream"])
                .inc();
            // NATS is likely away (that is logged once, by the connection's events).
            tracing::debug!(channel = %link.channel, error = %e, "Cannot read the channel's stream to catch up; trying again in a second");
            position.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            false
        }
    }
}

/// Tells the channel's subscribers here to reconnect and recover.
fn force_recover(cluster: &Cluster, node: &Node, link: &Link) {
    let n = node.hub.disconnect_subscribers(
        &link.channel,
        &Disconnect::new(
            CloseCode::Restart,
            "this node missed publications of a channel you are subscribed to; reconnect and recover",
        ),
    );
    cluster.metrics.forced_recoveries.inc_by(n as u64);
    tracing::warn!(channel = %link.channel, subscribers = n, "Told the channel's subscribers to reconnect and recover");
}
