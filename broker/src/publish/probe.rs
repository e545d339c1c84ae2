//! The publish latency sample: which publications carry their acceptance time to the
//! last local subscriber's write.

use std::time::Instant;

use crate::clock::Countdown;

/// One publication in this many, per thread, is timed from acceptance to its last local
/// subscriber's write (`hookwire_publish_latency_seconds`): a sample keeps the histogram's
/// shape without two clock reads and a shared histogram update per publication.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

/// The acceptance time to carry when this publication is the thread's sample (the first
/// on each thread, then every [`LATENCY_SAMPLE_EVERY`]th).
pub fn latency_probe() -> Option<Instant> {
    thread_local! {
        static SAMPLE: Countdown = const { Countdown::new() };
    }
    SAMPLE
        .with(|sample| sample.pick(LATENCY_SAMPLE_EVERY))
        .then(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latency sample: the first publication on a thread, then one in
    /// `LATENCY_SAMPLE_EVERY`.
    #[test]
    fn one_publication_in_a_sample_carries_its_acceptance_time() {
        std::thread::spawn(|| {
            let every = LATENCY_SAMPLE_EVERY as usize;
            let sampled: Vec<usize> = (0..3 * every)
                .filter(|_| latency_probe().is_some())
                .collect();
            assert_eq!(sampled, vec![0, every, 2 * every]);
        })
        .join()
        .unwrap();
    }
}
