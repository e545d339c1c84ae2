//! Per-channel publication streams: offsets, epochs, bounded history and recovery.
//!
//! [`HistoryStore`] is the seam: [`MemoryHistory`] keeps streams in this process (the
//! epoch changes when it restarts); a NATS JetStream store replaces it in a cluster. The hub
//! calls `append` and the reads with the channel's shard lock held, so implementations must
//! not block: a remote store keeps a local window of its stream, fed by its consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::protocol::{EncodedFrame, StreamPosition};
use crate::validation::Problems;

/// `[history]`: how long streams live and how often they are swept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A channel stream with no publication for this long is forgotten (its epoch ends).
    pub stream_idle_ttl_secs: u64,
    /// How often expired history is swept.
    pub sweep_interval_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            stream_idle_ttl_secs: 3_600,
            sweep_interval_ms: 1_000,
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

/// What to read.
#[derive(Clone, Copy, Debug)]
pub enum Query<'a> {
    /// The newest `limit` publications, oldest first.
    Latest { limit: usize },
    /// Up to `limit` publications after `since`, oldest first; an error unless every
    /// publication after `since` is still kept (so nothing is silently skipped).
    Since {
        since: &'a StreamPosition,
        limit: usize,
    },
}

/// Publications read, with the stream's top.
#[derive(Debug)]
pub struct Page {
    pub position: Position,
    pub publications: Vec<EncodedFrame>,
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

/// Stores channel streams. See the module doc for the locking contract.
pub trait HistoryStore: Send + Sync + 'static {
    /// Gives the publication the next offset, stores the frame `encode` builds for it,
    /// and returns the new position and the frame.
    fn append(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        encode: &mut dyn FnMut(u64) -> EncodedFrame,
    ) -> (Position, EncodedFrame);

    /// The stream's current top (starting a stream, with a new epoch, if there is none).
    fn position(&self, channel: &ChannelName) -> Position;

    /// Reads publications.
    fn read(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        query: Query<'_>,
    ) -> Result<Page, ReadError>;

    /// Drops expired publications and forgets streams idle for longer than `idle_ttl_ms`.
    /// Returns (streams kept, publications kept, bytes kept).
    fn sweep(&self, now_ms: u64, idle_ttl_ms: u64) -> (usize, usize, usize);
}

const SHARDS: usize = 64;

/// History in this process's memory, bounded per channel by size and TTL.
pub struct MemoryHistory {
    shards: Box<[Mutex<StreamMap>]>,
}

type StreamMap = HashMap<Arc<str>, Stream>;

struct Stream {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Entry>,
    last_publish_ms: u64,
}

struct Entry {
    offset: u64,
    ts_ms: u64,
    frame: EncodedFrame,
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

impl Stream {
    fn new(now_ms: u64) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            last_publish_ms: now_ms,
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    fn expire(&mut self, policy: HistoryPolicy, now_ms: u64) {
        while self.entries.len() > policy.size {
            self.entries.pop_front();
        }
        let cutoff = now_ms.saturating_sub(policy.ttl_ms);
        while self.entries.front().is_some_and(|e| e.ts_ms < cutoff) {
            self.entries.pop_front();
        }
    }
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<StreamMap> {
        &self.shards[channel.shard(SHARDS)]
    }
}

impl HistoryStore for MemoryHistory {
    fn append(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        encode: &mut dyn FnMut(u64) -> EncodedFrame,
    ) -> (Position, EncodedFrame) {
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .entry(channel.shared().clone())
            .or_insert_with(|| Stream::new(now_ms));
        stream.top += 1;
        stream.last_publish_ms = now_ms;
        let frame = encode(stream.top);
        stream.entries.push_back(Entry {
            offset: stream.top,
            ts_ms: now_ms,
            frame: frame.clone(),
        });
        stream.expire(policy, now_ms);
        (stream.position(), frame)
    }

    fn position(&self, channel: &ChannelName) -> Position {
        let mut shard = self.shard(channel).lock();
        shard
            .entry(channel.shared().clone())
            .or_insert_with(|| Stream::new(crate::protocol::now_ms()))
            .position()
    }

    fn read(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        query: Query<'_>,
    ) -> Result<Page, ReadError> {
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .entry(channel.shared().clone())
            .or_insert_with(|| Stream::new(now_ms));
        stream.expire(policy, now_ms);
        let position = stream.position();
        let publications = match query {
            Query::Latest { limit } => {
                let skip = stream.entries.len().saturating_sub(limit);
                stream
                    .entries
                    .iter()
                    .skip(skip)
                    .map(|e| e.frame.clone())
                    .collect()
            }
            Query::Since { since, limit } => {
                if !position.matches_epoch(&since.epoch) {
                    return Err(ReadError::EpochChanged {
                        given: since.epoch.clone(),
                        current: position.epoch.to_string(),
                    });
                }
                if since.offset > stream.top {
                    return Err(ReadError::Ahead {
                        given: since.offset,
                        top: stream.top,
                    });
                }
                // Every publication after `since` must still be here.
                let oldest_needed = since.offset + 1;
                let oldest_kept = stream.entries.front().map_or(stream.top + 1, |e| e.offset);
                if oldest_needed <= stream.top && oldest_kept > oldest_needed {
                    return Err(ReadError::Gone {
                        given: since.offset,
                        oldest: oldest_kept,
                    });
                }
                stream
                    .entries
                    .iter()
                    .filter(|e| e.offset > since.offset)
                    .take(limit)
                    .map(|e| e.frame.clone())
                    .collect()
            }
        };
        Ok(Page {
            position,
            publications,
        })
    }

    fn sweep(&self, now_ms: u64, idle_ttl_ms: u64) -> (usize, usize, usize) {
        let (mut streams, mut pubs, mut bytes) = (0, 0, 0);
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, stream| {
                // TTL per stream is applied on access; here drop only fully idle streams.
                let keep = now_ms.saturating_sub(stream.last_publish_ms) < idle_ttl_ms;
                if keep {
                    streams += 1;
                    pubs += stream.entries.len();
                    bytes += stream.entries.iter().map(|e| e.frame.len()).sum::<usize>();
                }
                keep
            });
        }
        (streams, pubs, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    const POLICY: HistoryPolicy = HistoryPolicy {
        size: 3,
        ttl_ms: 1_000,
    };

    fn ch() -> ChannelName {
        ChannelName::parse("chat:a").unwrap()
    }

    fn push(h: &MemoryHistory, now: u64) -> Position {
        h.append(&ch(), POLICY, now, &mut |off| encode(&off)).0
    }

    fn offsets(page: &Page) -> Vec<String> {
        page.publications
            .iter()
            .map(|f| f.as_str().to_string())
            .collect()
    }

    #[test]
    fn offsets_increase_and_size_bounds_history() {
        let h = MemoryHistory::new();
        for i in 1..=5 {
            assert_eq!(push(&h, 10).offset, i);
        }
        let page = h
            .read(&ch(), POLICY, 10, Query::Latest { limit: 10 })
            .unwrap();
        assert_eq!(offsets(&page), vec!["3", "4", "5"]);
        let page = h
            .read(&ch(), POLICY, 10, Query::Latest { limit: 2 })
            .unwrap();
        assert_eq!(offsets(&page), vec!["4", "5"]);
    }

    #[test]
    fn since_returns_exactly_the_missed_or_refuses() {
        let h = MemoryHistory::new();
        let epoch = push(&h, 10).epoch.to_string();
        push(&h, 10);
        push(&h, 10);
        let at = |offset| StreamPosition {
            offset,
            epoch: epoch.clone(),
        };
        let q = |p: &StreamPosition| {
            h.read(
                &ch(),
                POLICY,
                10,
                Query::Since {
                    since: p,
                    limit: usize::MAX,
                },
            )
        };
        assert_eq!(offsets(&q(&at(1)).unwrap()), vec!["2", "3"]);
        assert!(q(&at(3)).unwrap().publications.is_empty());
        assert_eq!(offsets(&q(&at(0)).unwrap()), vec!["1", "2", "3"]);
        push(&h, 10); // offset 1 falls out (size 3)
        assert_eq!(
            q(&at(0)).unwrap_err(),
            ReadError::Gone {
                given: 0,
                oldest: 2
            }
        );
        assert_eq!(offsets(&q(&at(1)).unwrap()), vec!["2", "3", "4"]);
        assert!(matches!(q(&at(9)), Err(ReadError::Ahead { .. })));
        let wrong = StreamPosition {
            offset: 1,
            epoch: "nope".into(),
        };
        assert!(matches!(q(&wrong), Err(ReadError::EpochChanged { .. })));
    }

    #[test]
    fn ttl_expires_publications() {
        let h = MemoryHistory::new();
        let epoch = push(&h, 0).epoch.to_string();
        push(&h, 500);
        let page = h
            .read(&ch(), POLICY, 1_200, Query::Latest { limit: 10 })
            .unwrap();
        assert_eq!(offsets(&page), vec!["2"]);
        let since = StreamPosition { offset: 0, epoch };
        let err = h
            .read(
                &ch(),
                POLICY,
                1_200,
                Query::Since {
                    since: &since,
                    limit: 10,
                },
            )
            .unwrap_err();
        assert_eq!(
            err,
            ReadError::Gone {
                given: 0,
                oldest: 2
            }
        );
    }

    #[test]
    fn idle_streams_are_forgotten_with_their_epoch() {
        let h = MemoryHistory::new();
        let first = push(&h, 0).epoch;
        assert_eq!(h.sweep(100, 1_000).0, 1);
        assert_eq!(h.sweep(5_000, 1_000).0, 0);
        assert_ne!(push(&h, 5_000).epoch, first);
    }
}
