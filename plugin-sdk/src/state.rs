//! State shared by every instance (and version) of this plugin: counters, "seen"
//! marks, small caches. Instances otherwise keep nothing in common, so a rule such as
//! "at most once per ten minutes" belongs here, not in a field.
//!
//! The broker bounds each plugin's keys and bytes (`plugins.state_max_keys`,
//! `state_max_bytes`); a write past them answers [`Error::TooManyKeys`] or
//! [`Error::TooLarge`]. In a native build (`cargo test`) an in-memory map of the
//! test's thread stands in.
//!
//! ```
//! use hookwire_plugin::state;
//!
//! // The first caller in a minute wins; the others see `false`.
//! assert!(state::compare_and_set("seen:alice", None, Some(b"1"), Some(60_000)).unwrap());
//! assert!(!state::compare_and_set("seen:alice", None, Some(b"1"), Some(60_000)).unwrap());
//! assert_eq!(state::increment("count", 2, None).unwrap(), 2);
//! assert_eq!(state::get("count").unwrap(), Some(b"2".to_vec()));
//! ```

pub use crate::bindings::hookwire::plugin::state::StateError as Error;

/// The value of `key`, if it is set and has not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::state::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return native::with(|s| Ok(s.get(key)));
}

/// Sets `key`, expiring after `ttl_ms` milliseconds when given.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::state::set(key, value, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return native::with(|s| {
        s.put(key, Some(value.to_vec()), ttl_ms);
        Ok(())
    });
}

/// Deletes `key`; whether it was set.
pub fn delete(key: &str) -> Result<bool, Error> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::state::delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    return native::with(|s| {
        let was = s.get(key).is_some();
        s.put(key, None, None);
        Ok(was)
    });
}

/// Adds `by` to the counter `key` (kept as decimal text) and returns the new value; a
/// missing key counts from 0 and takes `ttl_ms`, an existing one keeps its expiry.
pub fn increment(key: &str, by: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::state::increment(key, by, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return native::with(|s| s.increment(key, by, ttl_ms));
}

/// Sets `key` to `value` (`None`: deletes it) only if its value is `expected`
/// (`None`: only if it is not set); whether it did.
pub fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: Option<&[u8]>,
    ttl_ms: Option<u64>,
) -> Result<bool, Error> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::hookwire::plugin::state::compare_and_set(key, expected, value, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return native::with(|s| {
        if s.get(key).as_deref() != expected {
            return Ok(false);
        }
        s.put(key, value.map(<[u8]>::to_vec), ttl_ms);
        Ok(true)
    });
}

/// Forgets every key of the native stand-in (between tests on one thread).
#[cfg(not(target_arch = "wasm32"))]
pub fn clear() {
    native::with(|s| s.0.clear());
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::Error;

    #[derive(Default)]
    pub struct Store(pub HashMap<String, (Vec<u8>, Option<Instant>)>);

    impl Store {
        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            let (value, expires) = self.0.get(key)?;
            expires
                .is_none_or(|at| at > Instant::now())
                .then(|| value.clone())
        }

        pub fn put(&mut self, key: &str, value: Option<Vec<u8>>, ttl_ms: Option<u64>) {
            let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            match value {
                Some(v) => self.0.insert(key.to_string(), (v, expires)),
                None => self.0.remove(key),
            };
        }

        pub fn increment(&mut self, key: &str, by: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
            let (current, expires) = match self.get(key) {
                Some(v) => {
                    let n = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok());
                    (n.ok_or(Error::NotANumber)?, self.0[key].1)
                }
                None => (
                    0,
                    ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                ),
            };
            let next = current.checked_add(by).ok_or(Error::NotANumber)?;
            self.0
                .insert(key.to_string(), (next.to_string().into_bytes(), expires));
            Ok(next)
        }
    }

    thread_local! {
        static STORE: RefCell<Store> = RefCell::default();
    }

    pub fn with<R>(f: impl FnOnce(&mut Store) -> R) -> R {
        STORE.with_borrow_mut(f)
    }
}
