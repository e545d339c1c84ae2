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
