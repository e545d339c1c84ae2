//! Monotonic milliseconds since the process first asked: deadlines small enough to keep
//! in an atomic (a connection's timer, see `Outbound::set_timer` and `session::tick`).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Now, in this clock.
pub fn now_ms() -> u64 {
    duration_ms(Instant::now().saturating_duration_since(*START))
}

/// A duration (a setting, a token's life) in this clock's unit.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Picks the events a sampled timing reads the clock for: the first, then one in
/// `every`. Kept per thread (a `thread_local!`), so picking costs no shared write; a
/// clock read costs about 30 ns on this project's machine, several per event add up.
pub struct Countdown(std::cell::Cell<u32>);

impl Countdown {
    pub const fn new() -> Self {
        Self(std::cell::Cell::new(0))
    }

    /// Whether this event is timed.
    pub fn pick(&self, every: u32) -> bool {
        match self.0.get() {
            0 => {
                self.0.set(every.saturating_sub(1));
                true
            }
            n => {
                self.0.set(n - 1);
                false
            }
        }
    }
}

impl Default for Countdown {
    fn default() -> Self {
        Self::new()
    }
}
