//! The seam between the publish pipeline and a channel's log.
//!
//! A [`Sequencer`] makes a checked publication part of its channel's log (offset, epoch,
//! history, idempotency) and gets it delivered to every subscriber. [`Local`], the single
//! node default, does both at once in the [`Hub`] (synchronous, under the channel's lock).
//! In a cluster (`cluster::Link`) the log is NATS: JetStream for namespaces with history,
//! whose acknowledgement gives the offset later ([`Sequencing::Later`]), and every node,
//! this one included, delivers through the hub's deliver-only entry
//! ([`Hub::deliver`]).
//!
//! [`Presence`] is the other half: who is in a channel, on this node or on every node.
//! [`Control`] is what acts on every node (disconnect, revocations, the channel list) and
//! says whether the cluster link is ready. A cluster hands all of them to the node as one
//! [`Federation`]; the node knows only these traits, not the cluster.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::channel::{ChannelName, Namespace};
use crate::hub::{Announce, Hub, NewPublication, Published};
use crate::protocol::{ErrorReply, PresenceEntry};

/// What a log did with a publication.
pub enum Sequencing {
    /// Sequenced and delivered here and now.
    Done(Published),
    /// Sent to the log; the future resolves once it is stored (or cannot be).
    Later(BoxFuture<'static, Result<Acked, ErrorReply>>),
}

/// A log's acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    pub offset: u64,
    /// The log had the idempotency key already: nothing new was stored or delivered.
    pub duplicate: bool,
}

/// A wait before a channel can be read or joined on this node (a cluster link loading
/// the channel's stream); `None`: ready now.
pub type Prepare = Option<BoxFuture<'static, Result<(), ErrorReply>>>;

/// The log of channels. See the module doc.
pub trait Sequencer: Send + Sync + 'static {
    /// Whether the log keeps the namespace's idempotency keys itself (then the pipeline's
    /// own window is skipped, and `publish` is given a message id). When it does not,
    /// `publish` answers [`Sequencing::Done`].
    fn keeps_keys(&self, ns: &Namespace) -> bool;

    /// Sequences and delivers. `message_id`: the scoped idempotency key, when
    /// [`Sequencer::keeps_keys`].
    fn publish(
        &self,
        ns: &Arc<Namespace>,
        publication: NewPublication<'_>,
        message_id: Option<&str>,
    ) -> Sequencing;

    /// Before a subscribe or a history read of the channel on this node.
    fn prepare(&self, ns: &Arc<Namespace>, channel: &ChannelName) -> Prepare;
}

/// The single node log: the hub's memory history.
pub struct Local {
    hub: Arc<Hub>,
}

impl Local {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Sequencer for Local {
    fn keeps_keys(&self, _: &Namespace) -> bool {
        false
    }

    fn publish(
        &self,
        ns: &Arc<Namespace>,
        publication: NewPublication<'_>,
        _: Option<&str>,
    ) -> Sequencing {
        Sequencing::Done(self.hub.publish(ns, publication))
    }

    fn prepare(&self, _: &Arc<Namespace>, _: &ChannelName) -> Prepare {
        None
    }
}

/// Who is in a channel, cut at `limits.max_reply_bytes` (the flag says whether it was).
pub type Members = (Vec<PresenceEntry>, bool);

/// Lists a channel's members: this node's ([`LocalPresence`]) or the cluster's.
pub trait Presence: Send + Sync + 'static {
    fn list(&self, channel: &ChannelName) -> PresenceList;
}

/// A presence answer, now or after asking other nodes.
pub enum PresenceList {
    Now(Members),
    Later(BoxFuture<'static, Members>),
}

/// This node's subscribers.
pub struct LocalPresence {
    hub: Arc<Hub>,
}

impl LocalPresence {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Presence for LocalPresence {
    fn list(&self, channel: &ChannelName) -> PresenceList {
        PresenceList::Now(self.hub.presence(channel))
    }
}

/// Acts on every node of a cluster, and says whether its link is ready.
pub trait Control: Send + Sync + 'static {
    /// Why the node is not ready (NATS away, streams not set up), `None` when it is.
    fn not_ready(&self) -> Option<String>;
    /// Every channel with subscribers on any node, with the cluster's counts.
    fn channels(&self) -> BoxFuture<'_, Vec<(String, usize)>>;
    /// Closes the user's connections on every node with 4003; returns how many.
    fn disconnect<'a>(&'a self, user: &'a str, reason: &'a str) -> BoxFuture<'a, usize>;
    /// Stores a revocation for every node (and every node started later).
    fn revoke<'a>(
        &'a self,
        user: &'a str,
        revoked_at: u64,
        until: u64,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Lifts a revocation on every node.
    fn unrevoke<'a>(&'a self, user: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// What a cluster gives a node: its name in the cluster, the log, presence, where the
/// hub's `join`/`leave` go, and control.
pub struct Federation {
    pub name: String,
    pub log: Arc<dyn Sequencer>,
    pub presence: Arc<dyn Presence>,
    pub announce: Arc<dyn Announce>,
    pub control: Arc<dyn Control>,
}
