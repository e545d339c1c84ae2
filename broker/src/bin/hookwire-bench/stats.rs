//! Latency histograms and the receive-side counters.
//!
//! The receive path runs for every delivered message (close to a million a second in the
//! fanout scenario, on two shared cores), so it never parses JSON: it checks the frame's
//! prefix, finds the `{"t":` bytes the publisher put at the start of `data`, reads the
//! integer after it, and records `now - t` in a fixed-size log-linear histogram.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: 32 gives about 3 % relative error, plenty for p50/p99.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64` value.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// A log-linear histogram of microsecond values: exact below 32 µs, then 32 buckets per
/// power of two. Fixed size, no allocation per record, cheap to merge across processes.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// The histogram as sent between processes: only the non-empty buckets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SparseHistogram {
    pub buckets: Vec<(u32, u64)>,
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = v >> shift; // in [SUB, 2 * SUB)
    ((shift + 1) as u64 * SUB + (sub - SUB)) as usize
}

/// The largest value that falls in bucket `i` (reported percentiles err on the high side).
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB + SUB;
    let lower = sub << shift;
    lower + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), within the bucket's resolution; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i).min(self.max);
            }
        }
        self.max
    }

    pub fn to_sparse(&self) -> SparseHistogram {
        SparseHistogram {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
        }
    }

    pub fn merge(&mut self, other: &SparseHistogram) {
        for &(i, c) in &other.buckets {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
        self.max = self.max.max(other.max);
    }
}

/// Microseconds since the Unix epoch. The clock every process on the machine shares, so a
/// timestamp written by the publisher process can be compared by a subscriber process
/// (`Instant` cannot cross processes).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","#;
const STAMP: &[u8] = br#"{"t":"#;

/// Finds the publisher's timestamp in a `message` push: the digits after `{"t":`, the
/// start of `data`. Fast path: `data` is the first object after the frame's prefix
/// (channel names cannot hold `{`, and bench user ids do not); otherwise a full search.
/// The broker's own `"ts":` never matches.
pub fn find_stamp(frame: &[u8]) -> Option<u64> {
    let first_brace = frame.iter().position(|&b| b == b'{')?;
    let at = if frame[first_brace..].starts_with(STAMP) {
        first_brace + STAMP.len()
    } else {
        frame.windows(STAMP.len()).position(|w| w == STAMP)? + STAMP.len()
    };
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in &frame[at..] {
        if !b.is_ascii_digit() || digits == 20 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
    }
    (digits > 0).then_some(value)
}

/// What one worker's subscribers saw since the last reset.
pub struct RecvStats {
    /// Bench `message` pushes received (they carried a timestamp).
    pub received: u64,
    /// Any other frame: joins, leaves, messages without a stamp.
    pub other: u64,
    /// Receive time of the first and the last counted message (µs since the epoch).
    pub first_us: u64,
    pub last_us: u64,
    pub latency: Histogram,
    /// Messages per connection (index = the worker's subscriber number), to spot a
    /// connection that fell behind or was cut off.
    pub per_conn: Vec<u64>,
    /// Which subscriber numbers did connect (the others stay out of the minimum).
    connected: Vec<bool>,
}

impl RecvStats {
    pub fn new(connections: usize) -> Self {
        Self {
            received: 0,
            other: 0,
            first_us: 0,
            last_us: 0,
            latency: Histogram::default(),
            per_conn: vec![0; connections],
            connected: vec![false; connections],
        }
    }

    pub fn mark_connected(&mut self, conn: usize) {
        if let Some(c) = self.connected.get_mut(conn) {
            *c = true;
        }
    }

    /// Fewest and most messages one connected subscriber got (0, 0 without any).
    pub fn per_conn_range(&self) -> (u64, u64) {
        let mut counts = self
            .per_conn
            .iter()
            .zip(&self.connected)
            .filter(|(_, c)| **c)
            .map(|(n, _)| *n);
        let Some(first) = counts.next() else {
            return (0, 0);
        };
        counts.fold((first, first), |(lo, hi), n| (lo.min(n), hi.max(n)))
    }

    /// The per-message hot path.
    pub fn on_frame(&mut self, conn: usize, frame: &[u8], now: u64) {
        let stamp = if frame.starts_with(MESSAGE_PREFIX) {
            find_stamp(&frame[MESSAGE_PREFIX.len()..])
        } else {
            None
        };
        let Some(t) = stamp else {
            self.other += 1;
            return;
        };
        self.latency.record(now.saturating_sub(t));
        self.received += 1;
        if self.first_us == 0 {
            self.first_us = now;
        }
        self.last_us = now;
        if let Some(c) = self.per_conn.get_mut(conn) {
            *c += 1;
        }
    }

    /// Zeroes the counters; which connections are connected is kept.
    pub fn reset(&mut self) {
        let connected = std::mem::take(&mut self.connected);
        *self = Self::new(connected.len());
        self.connected = connected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last);
            assert!(b < BUCKETS);
            assert!(bucket_upper(b) >= v, "v={v} b={b}");
            last = b;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "{p50}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut merged = Histogram::default();
        merged.merge(&h.to_sparse());
        assert_eq!(merged.total(), 10_000);
        assert_eq!(merged.quantile(0.99), h.quantile(0.99));
    }

    #[test]
    fn finds_the_publisher_stamp_not_the_broker_ts() {
        let frame = br#"{"type":"message","channel":"chat:x","offset":3,"ts":1700000000000,"user":"u","data":{"t":1700000000123456,"p":"xx"}}"#;
        let mut s = RecvStats::new(1);
        s.on_frame(0, frame, 1_700_000_000_124_456);
        assert_eq!(s.received, 1);
        assert_eq!(s.latency.max(), 1000);
        s.on_frame(0, br#"{"type":"join","channel":"chat:x"}"#, 0);
        assert_eq!(s.other, 1);
        // Slow path: an object before `data`.
        let meta_first = br#"{"type":"message","user":"{odd}","info":{"a":1},"data":{"t":5}}"#;
        s.on_frame(0, meta_first, 7);
        assert_eq!(s.received, 2);
    }
}
