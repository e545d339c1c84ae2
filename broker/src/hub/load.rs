//! Whether a channel's fan-out (a publication, a `join` or `leave`) may be written
//! directly from the pushing thread, or must be queued for the subscribers' writers
//! (every fan-out goes through `Subscribers::fan_out`, which asks this).
//!
//! Direct writes ([`crate::outbound`]) spare a wake-up and a second thread per delivery,
//! which is what light traffic costs most; but each is a write of one frame, made under
//! the channel's shard lock. So a publication is queued instead when
//! - the channel delivers faster than [`DIRECT_MAX_PER_SEC`]: its subscribers' writers
//!   then run on every worker and gather many frames into each write (a fan-out at full
//!   speed wrote about 10 frames per write so, and 1.8 times as many deliveries per
//!   second as when the publishing thread wrote each one itself);
//! - it has more than [`DIRECT_MAX_SUBSCRIBERS`] subscribers here: a write costs about
//!   4 µs, so a direct fan-out to 1,024 holds the shard lock (and delays the other
//!   channels of its shard) about as long as queueing for 10,000 does; larger ones
//!   would hold it for tens of milliseconds. A publication to such a channel is
//!   queued under the lock without waking the writers, and the publishing thread
//!   writes those queues once it let the lock go ([`Verdict::Large`]), so a quiet
//!   channel of any size costs no wake-up per delivery either.
//!
//! A busy channel of up to [`DIRECT_MAX_SUBSCRIBERS`] ([`Verdict::Busy`] with `large`
//! false) is still written by the publishing thread when the publishing session's read
//! brought several frames (`outbound::deferring`): each subscriber then gets the read's
//! frames in one write, which gathers as well as its writer would, without a wake-up
//! per subscriber or the second worker's CPU taken from everything else on the machine
//! (one publisher to 1,000 subscribers flat out: 1.21 M deliveries/s at 100 % CPU,
//! against 0.78–0.91 M at 105–117 % queued). A busy large channel keeps its writers on
//! every worker: one thread writing 10,000 subscribers per read delivered a fifth less.

/// Deliveries per second above which a channel's publications are queued.
pub const DIRECT_MAX_PER_SEC: u64 = 300_000;

/// Subscribers above which a channel's publications are queued.
pub const DIRECT_MAX_SUBSCRIBERS: usize = 1_024;

/// The rate is measured over windows of this length.
const WINDOW_MS: u64 = 100;

/// A channel's deliveries in the current window, and the verdict of the last one.
#[derive(Debug, Default)]
pub struct Load {
    window_start_ms: u64,
    in_window: u64,
    busy: bool,
}

impl Load {
    /// Counts a publication to `subscribers` at `now_ms`; whether it may be written
    /// directly (not too many subscribers, and the last window's rate was under
    /// [`DIRECT_MAX_PER_SEC`]).
    #[cfg(test)]
    pub fn direct(&mut self, now_ms: u64, subscribers: usize) -> bool {
        self.verdict(now_ms, subscribers) == Verdict::Direct
    }

    /// [`Load::direct`], telling a large quiet channel ([`Verdict::Large`]) from a busy one.
    pub fn verdict(&mut self, now_ms: u64, subscribers: usize) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= WINDOW_MS {
            self.busy = self.in_window * 1000 / elapsed > DIRECT_MAX_PER_SEC;
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        self.in_window += subscribers as u64;
        if self.busy {
            Verdict::Busy {
                large: subscribers > DIRECT_MAX_SUBSCRIBERS,
            }
        } else if subscribers > DIRECT_MAX_SUBSCRIBERS {
            Verdict::Large
        } else {
            Verdict::Direct
        }
    }
}

/// How a channel's fan-out goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written directly under the channel's lock where the pushing thread may.
    Direct,
    /// Quiet but large: a publication is queued under the lock without waking anyone,
    /// and the pushing thread writes it once the lock is let go (`Outbound::push_deferred`).
    Large,
    /// Busy: queued for the subscribers' writers, except that a channel that is not
    /// `large` is deferred like a quiet one when the pushing session's read brought
    /// several frames.
    Busy { large: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes to `subs` subscribers every `every_ms` for `for_ms`; the last verdict.
    fn run(load: &mut Load, start: u64, subs: usize, every_ms: u64, for_ms: u64) -> bool {
        let mut direct = true;
        let mut t = start;
        while t < start + for_ms {
            direct = load.direct(t, subs);
            t += every_ms;
        }
        direct
    }

    #[test]
    fn a_quiet_channel_writes_directly() {
        let mut load = Load::default();
        // 1,000 subscribers, 200 publications a second: 200,000 deliveries a second.
        assert!(run(&mut load, 1_000, 1_000, 5, 2_000));
        // One subscriber, a publication every millisecond.
        assert!(run(&mut load, 3_000, 1, 1, 1_000));
    }

    #[test]
    fn a_busy_channel_queues_and_a_calmer_one_writes_directly_again() {
        let mut load = Load::default();
        // 1,000 subscribers, a publication every millisecond: a million a second.
        assert!(!run(&mut load, 1_000, 1_000, 1, 1_000));
        assert_eq!(load.verdict(2_000, 1_000), Verdict::Busy { large: false });
        assert!(run(&mut load, 2_000, 1_000, 50, 1_000));
        // The same rate to a large channel.
        assert!(!run(&mut load, 4_000, 2_000, 1, 1_000));
        assert_eq!(load.verdict(5_000, 2_000), Verdict::Busy { large: true });
    }

    #[test]
    fn the_first_publications_and_those_after_a_long_pause_are_direct() {
        let mut load = Load::default();
        assert!(load.direct(5, 1_000));
        assert!(!run(&mut load, 1_000, 1_000, 1, 500));
        // After a minute of silence the last window's rate is tiny.
        assert!(load.direct(61_000, 1_000));
    }

    #[test]
    fn a_large_channel_queues_however_quiet() {
        let mut load = Load::default();
        assert!(load.direct(5, DIRECT_MAX_SUBSCRIBERS));
        assert!(!load.direct(10, DIRECT_MAX_SUBSCRIBERS + 1));
        assert!(!run(&mut load, 1_000, 10_000, 50, 2_000));
    }
}
