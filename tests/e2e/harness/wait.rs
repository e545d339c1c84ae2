//! The one bound on every wait in these tests.

use std::time::Duration;

use tokio::time::Instant;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The deadline of a wait that starts now.
pub fn deadline() -> Instant {
    Instant::now() + WAIT
}

/// Raises this process's open-files limit to at least `n` where the hard limit allows
/// (brokers started afterwards inherit it), for tests holding many connections.
pub fn raise_open_files(n: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.map_or(n, |max| n.min(max));
    if limit.current.is_some_and(|current| current < wanted) {
        limit.current = Some(wanted);
        setrlimit(Resource::Nofile, limit).expect("raising the open-files limit");
    }
}
