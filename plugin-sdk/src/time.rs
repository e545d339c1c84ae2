//! The broker's clocks. In a native build (`cargo test`) the machine's clocks
//! stand in for them.

/// Wall-clock time: nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::host::now_unix_nanos();
    #[cfg(not(target_arch = "wasm32"))]
    return native::now_unix_nanos();
}

/// Wall-clock time: milliseconds since the Unix epoch, the unit of `ts` in the
/// client protocol.
pub fn now_unix_millis() -> u64 {
    now_unix_nanos() / 1_000_000
}

/// Monotonic time in nanoseconds from an arbitrary origin, for durations.
pub fn monotonic_nanos() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::host::monotonic_nanos();
    #[cfg(not(target_arch = "wasm32"))]
    return native::monotonic_nanos();
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime};

    pub fn now_unix_nanos() -> u64 {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn monotonic_nanos() -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let (wall, mono) = (now_unix_nanos(), monotonic_nanos());
        assert!(wall > 1_600_000_000_000_000_000, "{wall}");
        assert!(now_unix_millis() >= wall / 1_000_000);
        assert!(monotonic_nanos() >= mono);
    }
}
