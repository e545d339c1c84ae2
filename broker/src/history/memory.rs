//! [`MemoryHistory`]: streams in this process's memory, bounded per channel (the
//! namespace's size and TTL) and per node (`history.max_streams`, `history.max_bytes`).
//!
//! Epochs: a stream's epoch is a random per-process name followed by the generation of
//! the channel's slot (16,384 slots by channel-name hash), a count of the streams of that
//! slot that were forgotten. So a channel without a stream has a known next epoch, the one
//! its first publication will get, without storing anything; if a stream of its slot is
//! forgotten meanwhile the value moves on, and a client that recovers with the old one gets
//! `recovered: false` rather than a gap. Two lifetimes of one channel never share an epoch.
//!
//! Caps: the node's caps are split evenly over the 64 shards. A shard at its stream share
//! evicts its least recently published stream before it starts a new one; a shard over its
//! byte share evicts its least recently published other streams, and when the stream being
//! appended to is alone, drops that stream's oldest publications. An evicted stream's epoch
//! ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::frames::Frames;
use super::{
    HistoryConfig, HistoryPolicy, HistoryStore, Page, Position, Query, ReadError, Restored,
    Sequenced, SweepStats, new_epoch,
};
use crate::channel::{ChannelName, NameMap};
use crate::protocol::EncodedFrame;

const SHARDS: usize = 64;
const SLOTS_PER_SHARD: usize = 256;

/// History in this process's memory. See the module doc.
pub struct MemoryHistory {
    /// A replica of a cluster's log ([`MemoryHistory::replica`]): streams are made by
    /// `restore` and ended by `forget`, never by the sweeper or the caps.
    replica: bool,
    boot: Arc<str>,
    shards: Box<[Mutex<Shard>]>,
    caps: Caps,
    evicted_for_streams: AtomicU64,
    evicted_for_bytes: AtomicU64,
}

/// One shard's share of the node's caps.
#[derive(Clone, Copy, Debug)]
struct Caps {
    streams: usize,
    bytes: usize,
}

struct Shard {
    streams: NameMap<Arc<str>, Stream>,
    bytes: usize,
    generations: Box<[u64]>,
}

struct Stream {
    epoch: Arc<str>,
    slot: usize,
    top: u64,
    /// The offset of the last publication dropped (0: none): a recovery from an older
    /// offset may have missed something. Offsets may skip numbers (a cluster's log), so
    /// this, not the oldest kept offset, decides.
    floor: u64,
    entries: VecDeque<Entry>,
    /// The entries' frames, in their order.
    frames: Frames,
    last_publish_ms: u64,
    /// The policy of the last append, which the sweeper applies.
    policy: HistoryPolicy,
}

struct Entry {
    offset: u64,
    ts_ms: u64,
    /// The frame's length in `Stream::frames`.
    len: usize,
}

/// The epoch of a stream started in a slot at `generation`.
fn epoch_at(boot: &Arc<str>, generation: u64) -> Arc<str> {
    if generation == 0 {
        boot.clone()
    } else {
        Arc::from(format!("{boot}-{generation}"))
    }
}

/// The channel's shard and its slot within the shard.
fn locate(channel: &ChannelName) -> (usize, usize) {
    let v = channel.shard(SHARDS * SLOTS_PER_SHARD);
    (v % SHARDS, v / SHARDS)
}

impl Stream {
    fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops the oldest publication; returns its bytes.
    fn pop_front(&mut self) -> usize {
        let Some(e) = self.entries.pop_front() else {
            return 0;
        };
        self.floor = e.offset;
        self.frames.pop(e.len);
        e.len
    }

    /// Keeps a publication (after the ones kept).
    fn push_back(&mut self, offset: u64, ts_ms: u64, frame: &EncodedFrame) {
        self.frames.push(frame.as_bytes());
        self.entries.push_back(Entry {
            offset,
            ts_ms,
            len: frame.len(),
        });
    }

    /// Bytes kept.
    fn bytes(&self) -> usize {
        self.frames.used()
    }

    fn new(epoch: Arc<str>, slot: usize, now_ms: u64, policy: HistoryPolicy) -> Self {
        Self {
            epoch,
            slot,
            top: 0,
            floor: 0,
            entries: VecDeque::new(),
            frames: Frames::default(),
            last_publish_ms: now_ms,
            policy,
        }
    }

    /// Applies the size and TTL bounds; returns the bytes freed.
    fn expire(&mut self, policy: HistoryPolicy, now_ms: u64) -> usize {
        let mut freed = 0;
        while self.entries.len() > policy.size {
            freed += self.pop_front();
        }
        let cutoff = now_ms.saturating_sub(policy.ttl_ms);
        while self.entries.front().is_some_and(|e| e.ts_ms < cutoff) {
            freed += self.pop_front();
        }
        freed
    }

    fn read(&self, query: Query<'_>) -> Result<Page, ReadError> {
        let position = self.position();
        let (publications, next) = match query {
            Query::Latest { limit, max_bytes } => {
                let skip = self.entries.len().saturating_sub(limit);
                self.take_page(|_| true, skip, limit, max_bytes)
            }
            Query::Since {
                since,
                limit,
                max_bytes,
            } => {
                if !position.matches_epoch(&since.epoch) {
                    return Err(ReadError::EpochChanged {
                        given: since.epoch.clone(),
                        current: position.epoch.to_string(),
                    });
                }
                if since.offset > self.top {
                    return Err(ReadError::Ahead {
                        given: since.offset,
                        top: self.top,
                    });
                }
                // Every publication after `since` must still be here.
                if since.offset < self.floor {
                    return Err(ReadError::Gone {
                        given: since.offset,
                        oldest: self.entries.front().map_or(self.top + 1, |e| e.offset),
                    });
                }
                self.take_page(|e| e.offset > since.offset, 0, limit, max_bytes)
            }
        };
        Ok(Page {
            position,
            publications,
            next,
        })
    }
}

impl Stream {
    /// Copies of up to `limit` frames from the first entry at or past `skip` that is
    /// `wanted`, until `max_bytes` (at least one); `Some(last offset)` when cut.
    fn take_page(
        &self,
        wanted: impl Fn(&Entry) -> bool,
        skip: usize,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<EncodedFrame>, Option<u64>) {
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut last = None;
        // Where each entry's frame starts in the ring.
        let mut at = 0;
        let mut entries = self.entries.iter().enumerate();
        for (i, e) in entries.by_ref() {
            if i >= skip && wanted(e) {
                if out.len() == limit {
                    break;
                }
                if !out.is_empty() && used.saturating_add(e.len) > max_bytes {
                    return (out, last);
                }
                used += e.len;
                last = Some(e.offset);
                out.push(EncodedFrame::from_serialized(self.frames.copy(at, e.len)));
            }
            at += e.len;
        }
        (out, None)
    }
}

/// A read of a channel without a stream: offset 0 and the epoch to come.
fn read_unknown(position: Position, query: Query<'_>) -> Result<Page, ReadError> {
    if let Query::Since { since, .. } = query {
        if !position.matches_epoch(&since.epoch) {
            return Err(ReadError::EpochChanged {
                given: since.epoch.clone(),
                current: position.epoch.to_string(),
            });
        }
        if since.offset > 0 {
            return Err(ReadError::Ahead {
                given: since.offset,
                top: 0,
            });
        }
    }
    Ok(Page {
        position,
        publications: Vec::new(),
        next: None,
    })
}

impl Shard {
    fn new() -> Self {
        Self {
            streams: NameMap::default(),
            bytes: 0,
            generations: vec![0; SLOTS_PER_SHARD].into_boxed_slice(),
        }
    }

    /// Forgets a stream; its slot moves to the next generation (its epoch ends).
    fn forget(&mut self, name: &str) {
        if let Some(stream) = self.streams.remove(name) {
            self.bytes -= stream.bytes();
            self.generations[stream.slot] = self.generations[stream.slot].wrapping_add(1);
        }
    }

    /// Forgets the least recently published stream other than `except`.
    fn evict_oldest(&mut self, except: Option<&str>) -> bool {
        let oldest = self
            .streams
            .iter()
            .filter(|(name, _)| Some(&***name) != except)
            .min_by_key(|(_, s)| s.last_publish_ms)
            .map(|(name, _)| name.clone());
        match oldest {
            Some(name) => {
                self.forget(&name);
                true
            }
            None => false,
        }
    }
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    /// With the default `[history]` caps.
    pub fn new() -> Self {
        Self::from_config(&HistoryConfig::default())
    }

    pub fn from_config(config: &HistoryConfig) -> Self {
        let share = |total: u64| usize::try_from(total / SHARDS as u64).unwrap_or(usize::MAX);
        Self {
            replica: false,
            boot: new_epoch(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            caps: Caps {
                streams: share(config.max_streams).max(1),
                bytes: share(config.max_bytes).max(1),
            },
            evicted_for_streams: AtomicU64::new(0),
            evicted_for_bytes: AtomicU64::new(0),
        }
    }

    /// A replica of a cluster's log: offsets and epochs come from `insert` and `restore`
    /// (the cluster link keeps a stream here while the channel has local subscribers);
    /// `append` is not used. `history.max_bytes` drops a stream's oldest publications.
    pub fn replica(config: &HistoryConfig) -> Self {
        Self {
            replica: true,
            ..Self::from_config(config)
        }
    }

    /// Makes room for a new stream in a shard at its stream share.
    fn make_room(&self, shard: &mut Shard) {
        while shard.streams.len() >= self.caps.streams && shard.evict_oldest(None) {
            self.evicted_for_streams.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Brings a shard under its byte share after an append to `name`.
    fn enforce_bytes(&self, shard: &mut Shard, name: &str) {
        while shard.bytes > self.caps.bytes {
            if self.replica || !shard.evict_oldest(Some(name)) {
                let Some(stream) = shard.streams.get_mut(name) else {
                    return;
                };
                if stream.entries.len() <= 1 {
                    return;
                }
                let freed = stream.pop_front();
                shard.bytes -= freed;
            }
            self.evicted_for_bytes.fetch_add(1, Ordering::Relaxed);
        }
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
        let (index, slot) = locate(channel);
        let name = channel.shared();
        let mut guard = self.shards[index].lock();
        let shard = &mut *guard;
        if shard.streams.len() >= self.caps.streams && !shard.streams.contains_key(&**name) {
            self.make_room(shard);
        }
        // A publication's hot path: a stream that exists is found without touching the
        // name's reference count; a new one is keyed by a clone of it.
        let generations = &shard.generations;
        let stream = match shard.streams.get_mut(&**name) {
            Some(stream) => stream,
            None => shard.streams.entry(name.clone()).or_insert_with(|| {
                let epoch = epoch_at(&self.boot, generations[slot]);
                Stream::new(epoch, slot, now_ms, policy)
            }),
        };
        stream.top += 1;
        stream.last_publish_ms = now_ms;
        stream.policy = policy;
        let frame = encode(stream.top);
        stream.push_back(stream.top, now_ms, &frame);
        let freed = stream.expire(policy, now_ms);
        let position = stream.position();
        shard.bytes = shard.bytes + frame.len() - freed;
        self.enforce_bytes(shard, name);
        (position, frame)
    }

    fn insert(&self, channel: &ChannelName, policy: HistoryPolicy, now_ms: u64, s: Sequenced) {
        let (index, slot) = locate(channel);
        let name = channel.shared();
        let mut guard = self.shards[index].lock();
        let shard = &mut *guard;
        let stream = shard.streams.entry(name.clone()).or_insert_with(|| {
            // Not restored: what came before this publication is unknown.
            let mut stream = Stream::new(s.epoch.clone(), slot, now_ms, policy);
            stream.floor = s.offset;
            stream
        });
        if stream.epoch != s.epoch {
            let freed = stream.bytes();
            *stream = Stream::new(s.epoch.clone(), slot, now_ms, policy);
            stream.floor = s.offset;
            shard.bytes -= freed;
        }
        if s.offset <= stream.top {
            return;
        }
        stream.top = s.offset;
        stream.last_publish_ms = now_ms;
        stream.policy = policy;
        let len = s.frame.len();
        stream.push_back(s.offset, s.ts_ms, &s.frame);
        let freed = stream.expire(policy, now_ms);
        shard.bytes = shard.bytes + len - freed;
        self.enforce_bytes(shard, name);
    }

    fn restore(&self, channel: &ChannelName, policy: HistoryPolicy, now_ms: u64, r: Restored) {
        let (index, slot) = locate(channel);
        let name = channel.shared();
        let mut guard = self.shards[index].lock();
        let shard = &mut *guard;
        shard.forget(name);
        let mut stream = Stream::new(r.epoch, slot, now_ms, policy);
        stream.floor = r.floor;
        stream.top = r.top;
        for s in r.publications {
            stream.top = stream.top.max(s.offset);
            stream.push_back(s.offset, s.ts_ms, &s.frame);
        }
        let added = stream.bytes();
        let freed = stream.expire(policy, now_ms);
        shard.bytes = shard.bytes + added - freed;
        shard.streams.insert(name.clone(), stream);
        self.enforce_bytes(shard, name);
    }

    fn forget(&self, channel: &ChannelName) {
        let (index, _) = locate(channel);
        self.shards[index].lock().forget(channel.as_str());
    }

    fn position(&self, channel: &ChannelName) -> Position {
        let (index, slot) = locate(channel);
        let shard = self.shards[index].lock();
        match shard.streams.get(channel.as_str()) {
            Some(stream) => stream.position(),
            None => Position {
                offset: 0,
                epoch: epoch_at(&self.boot, shard.generations[slot]),
            },
        }
    }

    fn read(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        now_ms: u64,
        query: Query<'_>,
    ) -> Result<Page, ReadError> {
        let (index, slot) = locate(channel);
        let mut guard = self.shards[index].lock();
        let shard = &mut *guard;
        let Some(stream) = shard.streams.get_mut(channel.as_str()) else {
            let position = Position {
                offset: 0,
                epoch: epoch_at(&self.boot, shard.generations[slot]),
            };
            return read_unknown(position, query);
        };
        shard.bytes -= stream.expire(policy, now_ms);
        stream.read(query)
    }

    fn sweep(&self, now_ms: u64, idle_ttl_ms: u64) -> SweepStats {
        let mut stats = SweepStats::default();
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let idle: Vec<Arc<str>> = shard
                .streams
                .iter()
                .filter(|(_, s)| {
                    !self.replica && now_ms.saturating_sub(s.last_publish_ms) >= idle_ttl_ms
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in idle {
                shard.forget(&name);
            }
            for stream in shard.streams.values_mut() {
                let policy = stream.policy;
                shard.bytes -= stream.expire(policy, now_ms);
                stats.publications += stream.entries.len();
            }
            stats.streams += shard.streams.len();
            stats.bytes += shard.bytes;
        }
        stats.evicted_for_streams = self.evicted_for_streams.swap(0, Ordering::Relaxed);
        stats.evicted_for_bytes = self.evicted_for_bytes.swap(0, Ordering::Relaxed);
        stats
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
