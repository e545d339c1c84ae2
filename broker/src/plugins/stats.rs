//! Per-plugin call statistics for `/admin/plugins`: counts and a log-bucketed histogram
//! of hook time (sampled, see [`TIMED_EVERY`]), recorded with a few atomic adds per call.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets: 4 per power of two of nanoseconds, up to 2^40 ns (18 minutes).
const SUB: usize = 4;
const BUCKETS: usize = 40 * SUB;

pub struct Stats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    let ns = ns.max(1);
    let log = 63 - ns.leading_zeros() as usize;
    // The two bits below the leading one pick the quarter within the power of two.
    let frac = if log >= 2 {
        ((ns >> (log - 2)) & 3) as usize
    } else {
        0
    };
    (log * SUB + frac).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in nanoseconds.
fn bucket_upper(i: usize) -> u64 {
    let log = i / SUB;
    let frac = (i % SUB) as u64;
    if log < 2 {
        return 1 << (log + 1);
    }
    (1u64 << log) + ((frac + 1) << (log - 2))
}

/// One hook call in this many, per thread, is timed (the first on each thread, then
/// every `TIMED_EVERY`th; a call that ran past a deadline tick always is): the histograms
/// here and `hookwire_plugin_hook_seconds` hold a sample, `calls` counts every call.
/// Two clock reads per call were a tenth of a bare call's cost.
pub const TIMED_EVERY: u32 = 16;

impl Stats {
    /// One call that was not timed.
    pub fn count(&self) {
        self.calls.fetch_add(1, Relaxed);
    }

    /// One timed call.
    pub fn record(&self, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    /// The `q` quantile of hook time (an upper bound, within 25%), `None` before any call.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_recorded_times() {
        let s = Stats::default();
        for _ in 0..98 {
            s.record(Duration::from_nanos(900));
        }
        s.record(Duration::from_micros(40));
        s.record(Duration::from_micros(41));
        let p50 = s.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_nanos(900) && p50 <= Duration::from_nanos(1_125),
            "{p50:?}"
        );
        let p99 = s.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_micros(40) && p99 <= Duration::from_micros(52),
            "{p99:?}"
        );
        assert_eq!(s.calls.load(Relaxed), 100);
        assert!(Stats::default().quantile(0.99).is_none());
    }

    #[test]
    fn untimed_calls_are_counted_but_not_in_the_quantiles() {
        let s = Stats::default();
        s.record(Duration::from_micros(3));
        for _ in 0..TIMED_EVERY - 1 {
            s.count();
        }
        assert_eq!(s.calls.load(Relaxed), u64::from(TIMED_EVERY));
        let p99 = s.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_micros(3), "{p99:?}");
        assert!(p99 <= Duration::from_nanos(3_750), "{p99:?}");
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for ns in [1u64, 2, 3, 5, 8, 100, 1_000, 1_500, 10_000, 1 << 30] {
            let b = bucket_of(ns);
            assert!(b >= last);
            assert!(
                bucket_upper(b) >= ns,
                "{ns} in bucket {b} with upper {}",
                bucket_upper(b)
            );
            last = b;
        }
    }
}
