//! The one bound on every wait in these tests.

use std::time::Duration;

use tokio::time::Instant;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The deadline of a wait that starts now.
pub fn deadline() -> Instant {
    Instant::now() + WAIT
}
