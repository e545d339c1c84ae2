//! Per-channel publication streams: offsets, epochs, bounded history and recovery.
//!
//! [`HistoryStore`] is the seam: [`MemoryHistory`] keeps streams in this process (the
//! epoch changes when it restarts). In a cluster the log is a JetStream stream and this
//! node keeps a replica ([`MemoryHistory::replica`]) of the channels it has subscribers
//! for, fed by `insert` and `restore` (see `cluster`). The hub calls these and the reads
//! with the channel's shard lock held, so implementations must not block.
//!
//! Only a publication creates a stream. A read of a channel that has none (`history`,
//! `subscribe`) answers offset 0 and the epoch the channel's first publication will get,
//! and stores nothing, so reads cannot fill memory.

mod frames;
mod memory;
#[cfg(test)]
mod props;

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::protocol::{EncodedFrame, StreamPosition};
use crate::validation::Problems;

pub use memory::MemoryHistory;

/// `[history]`: how long streams live, how often they are swept, and the node-wide caps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A channel stream with no publication for this long is forgotten (its epoch ends).
    pub stream_idle_ttl_secs: u64,
    /// How often expired history is swept.
    pub sweep_interval_ms: u64,
    /// Streams kept on this node; past it the least recently published stream is evicted.
    pub max_streams: u64,
    /// Bytes of publications kept on this node; past it the least recently published
    /// streams are evicted.
    pub max_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            stream_idle_ttl_secs: 3_600,
            sweep_interval_ms: 1_000,
            max_streams: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

impl HistoryConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.range(
            "history.stream_idle_ttl_secs",
            self.stream_idle_ttl_secs,
            1,
            30 * 86_400,
        );
        p.range(
            "history.sweep_interval_ms",
            self.sweep_interval_ms,
            10,
            600_000,
        );
        p.range("history.max_streams", self.max_streams, 64, 100_000_000);
        p.range("history.max_bytes", self.max_bytes, 1 << 20, 1 << 40);
    }
}

/// A namespace's history settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub size: usize,
    pub ttl_ms: u64,
}

/// The top of a stream: the last offset given out and the stream's epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Position {
    pub fn matches_epoch(&self, epoch: &str) -> bool {
        &*self.epoch == epoch
    }
}

/// What to read. `max_bytes` bounds the publications' bytes in one page (at least one
/// publication is returned when any is due); a page cut by it says where to go on.
#[derive(Clone, Copy, Debug)]
pub enum Query<'a> {
    /// The newest `limit` publications, oldest first.
    Latest { limit: usize, max_bytes: usize },
    /// Up to `limit` publications after `since`, oldest first; an error unless every
    /// publication after `since` is still kept (so nothing is silently skipped).
    Since {
        since: &'a StreamPosition,
        limit: usize,
        max_bytes: usize,
    },
}

/// Publications read, with the stream's top.
#[derive(Debug)]
pub struct Page {
    pub position: Position,
    pub publications: Vec<EncodedFrame>,
    /// `Some(offset)` when `max_bytes` cut the page: the offset of its last publication,
    /// to read on from with `since`.
    pub next: Option<u64>,
}

/// Why a `since` read cannot be answered completely.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error(
        "the stream's epoch is now {current:?}, not {given:?}: its history was lost (e.g. a restart); reload state"
    )]
    EpochChanged { given: String, current: String },
    #[error(
        "offset {given} is older than the history kept (oldest kept is {oldest}); reload state"
    )]
    Gone { given: u64, oldest: u64 },
    #[error("offset {given} is past the stream's last offset {top}")]
    Ahead { given: u64, top: u64 },
}

/// A publication whose offset and epoch were given by a cluster's log.
#[derive(Clone, Debug)]
pub struct Sequenced {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub ts_ms: u64,
    pub frame: EncodedFrame,
}

/// A channel's stream as read from a cluster's log.
#[derive(Debug)]
pub struct Restored {
    pub epoch: Arc<str>,
    /// Recovery from an offset below this may have missed something.
    pub floor: u64,
    /// The stream's top: at least the last publication's offset (offsets skip numbers,
    /// so it may be higher: everything up to it is known).
    pub top: u64,
    /// Oldest first.
    pub publications: Vec<Sequenced>,
}

/// What a sweep kept, and what the caps evicted since the last sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub streams: usize,
    pub publications: usize,
    pub bytes: usize,
    /// Streams evicted because `history.max_streams` was reached.
    pub evicted_for_streams: u64,
    /// Streams evicted (or a lone stream's oldest publications dropped) because
    /// `history.max_bytes` was reached.
    pub evicted_for_bytes: u64,
}

/// Stores channel streams. See the module doc for the locking contract.
pub trait HistoryStore: Send + Sync + 'static {
    /// Gives the publication the next offset, stores the frame `encode` builds for it,
    /// and returns the new position and the frame. The only call that creates a stream.
    fn append(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        encode: &mut dyn FnMut(u64) -> EncodedFrame,
    ) -> (Position, EncodedFrame);

    /// Stores a publication sequenced elsewhere (a cluster's log: offset, epoch and time
    /// given). One at or below the stream's top is ignored (already stored); one with
    /// another epoch starts the stream over.
    fn insert(&self, channel: &ChannelName, policy: HistoryPolicy, now_ms: u64, s: Sequenced);

    /// Replaces the channel's stream with one read from a cluster's log.
    fn restore(&self, channel: &ChannelName, policy: HistoryPolicy, now_ms: u64, r: Restored);

    /// Drops the channel's stream (its epoch ends here).
    fn forget(&self, channel: &ChannelName);

    /// The stream's current top; for a channel without a stream, offset 0 and the epoch
    /// its first publication will get (nothing is stored).
    fn position(&self, channel: &ChannelName) -> Position;

    /// Reads publications (nothing is stored for a channel without a stream).
    fn read(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        query: Query<'_>,
    ) -> Result<Page, ReadError>;

    /// Drops expired publications (each stream by the policy of its last append) and
    /// forgets streams idle for longer than `idle_ttl_ms`.
    fn sweep(&self, now_ms: u64, idle_ttl_ms: u64) -> SweepStats;
}

/// A short random epoch name.
pub fn new_epoch() -> Arc<str> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let s: String = (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Arc::from(s)
}
