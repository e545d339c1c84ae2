//! Monotonic milliseconds since the process first asked: deadlines small enough to keep
//! in an atomic (a connection's timer, see `Outbound::set_timer` and `session::tick`).

use std::sync::LazyLock;
use std::time::Instant;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in this clock (0 for anything before its start).
pub fn ms(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*START).as_millis()).unwrap_or(u64::MAX)
}

/// Now, in this clock.
pub fn now_ms() -> u64 {
    ms(Instant::now())
}
