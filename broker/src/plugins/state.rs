//! The `state` interface: key-value state shared by every instance and version of one
//! plugin, in memory on this node, bounded in keys and bytes per plugin. Plugins see
//! only their own store (the host hands each instance its plugin's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::host::StoreData;
use super::host::wit_state::{Host, StateError};

/// Longest key, in bytes.
pub const KEY_MAX: usize = 256;

/// A plugin's bounds (`plugins.modules.NAME.state_max_keys`, `state_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    pub max_keys: usize,
    /// Keys and values together.
    pub max_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            max_bytes: 1 << 20,
        }
    }
}

/// One plugin's store.
#[derive(Default)]
pub struct StateStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    limits: StateLimits,
    map: HashMap<String, Entry>,
    /// Bytes of every key and value.
    bytes: usize,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl StateStore {
    pub fn new(limits: StateLimits) -> Self {
        let store = Self::default();
        store.inner.lock().limits = limits;
        store
    }

    /// New bounds (a reload): existing keys stay; writes past the bounds are refused.
    pub fn set_limits(&self, limits: StateLimits) {
        self.inner.lock().limits = limits;
    }

    /// Keys and bytes held now (expired keys not yet swept included).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.map.len(), inner.bytes)
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let inner = self.inner.lock();
        let entry = inner.map.get(key).filter(|e| e.live(now))?;
        Some(entry.value.clone())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), StateError> {
        let now = Instant::now();
        self.inner.lock().put(key, value, expiry(now, ttl_ms), now)
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.remove(key).is_some_and(|e| e.live(now))
    }

    pub fn increment(&self, key: &str, by: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let (current, expires) = match inner.map.get(key).filter(|e| e.live(now)) {
            Some(e) => (parse_counter(&e.value)?, e.expires),
            None => (0, expiry(now, ttl_ms)),
        };
        let next = current.checked_add(by).ok_or(StateError::NotANumber)?;
        inner.put(key, next.to_string().into_bytes(), expires, now)?;
        Ok(next)
    }

    pub fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let current = inner
            .map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        match value {
            Some(value) => inner.put(key, value, expiry(now, ttl_ms), now)?,
            None => {
                inner.remove(key);
            }
        }
        Ok(true)
    }
}

impl Inner {
    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires: Option<Instant>,
        now: Instant,
    ) -> Result<(), StateError> {
        if key.len() > KEY_MAX || key.len() + value.len() > self.limits.max_bytes {
            return Err(StateError::TooLarge);
        }
        if self.check_room(key, value.len()).is_err() {
            self.sweep(now);
        }
        let old = self.check_room(key, value.len())?;
        self.bytes = self.bytes - old + key.len() + value.len();
        self.map.insert(key.to_string(), Entry { value, expires });
        Ok(())
    }

    /// The bytes `key` holds now, if a value of `len` bytes fits in its place.
    fn check_room(&self, key: &str, len: usize) -> Result<usize, StateError> {
        let Some(old) = self.map.get(key).map(|e| key.len() + e.value.len()) else {
            if self.map.len() >= self.limits.max_keys {
                return Err(StateError::TooManyKeys);
            }
            return self.fits(0, key.len() + len);
        };
        self.fits(old, key.len() + len)
    }

    fn fits(&self, old: usize, new: usize) -> Result<usize, StateError> {
        if self.bytes - old + new > self.limits.max_bytes {
            return Err(StateError::TooLarge);
        }
        Ok(old)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= key.len() + entry.value.len();
        Some(entry)
    }

    /// Drops expired keys (only when a write would not fit: reads skip them anyway).
    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|k, e| {
            let keep = e.live(now);
            if !keep {
                freed += k.len() + e.value.len();
            }
            keep
        });
        self.bytes -= freed;
    }
}

fn parse_counter(value: &[u8]) -> Result<i64, StateError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(StateError::NotANumber)
}

impl Host for StoreData {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        Ok(Ok(self.state.get(&key)))
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        Ok(self.state.set(&key, value, ttl_ms))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, StateError>> {
        Ok(Ok(self.state.delete(&key)))
    }

    fn increment(
        &mut self,
        key: String,
        by: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, StateError>> {
        Ok(self.state.increment(&key, by, ttl_ms))
    }

    fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, StateError>> {
        Ok(self
            .state
            .compare_and_set(&key, expected.as_deref(), value, ttl_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> StateStore {
        StateStore::new(StateLimits {
            max_keys: 3,
            max_bytes: 64,
        })
    }

    #[test]
    fn values_set_read_delete_and_expire() {
        let s = small();
        s.set("a", b"1".to_vec(), None).unwrap();
        assert_eq!(s.get("a"), Some(b"1".to_vec()));
        assert!(s.delete("a"));
        assert!(!s.delete("a"));
        s.set("t", b"x".to_vec(), Some(0)).unwrap();
        assert_eq!(s.get("t"), None, "a zero ttl has expired at once");
        assert_eq!(
            s.usage(),
            (1, 2),
            "expired keys stay until a write needs room"
        );
    }

    #[test]
    fn counters_count_from_zero_keep_their_window_and_refuse_text() {
        let s = small();
        assert_eq!(s.increment("n", 2, Some(60_000)).unwrap(), 2);
        assert_eq!(s.increment("n", -5, None).unwrap(), -3);
        assert_eq!(s.get("n"), Some(b"-3".to_vec()));
        s.set("w", b"word".to_vec(), None).unwrap();
        assert_eq!(s.increment("w", 1, None), Err(StateError::NotANumber));
        s.set("m", i64::MAX.to_string().into_bytes(), None).unwrap();
        assert_eq!(s.increment("m", 1, None), Err(StateError::NotANumber));
    }

    #[test]
    fn compare_and_set_is_a_set_once_and_a_swap() {
        let s = small();
        assert!(
            s.compare_and_set("k", None, Some(b"1".to_vec()), None)
                .unwrap()
        );
        assert!(
            !s.compare_and_set("k", None, Some(b"2".to_vec()), None)
                .unwrap()
        );
        assert!(
            s.compare_and_set("k", Some(b"1"), Some(b"2".to_vec()), None)
                .unwrap()
        );
        assert!(s.compare_and_set("k", Some(b"2"), None, None).unwrap());
        assert_eq!(s.get("k"), None);
    }

    #[test]
    fn bounds_refuse_writes_and_expired_keys_make_room() {
        let s = small();
        for k in ["a", "b", "c"] {
            s.set(k, b"v".to_vec(), None).unwrap();
        }
        assert_eq!(
            s.set("d", b"v".to_vec(), None),
            Err(StateError::TooManyKeys)
        );
        s.set("a", b"overwrite".to_vec(), None).unwrap();
        assert_eq!(s.set("e", vec![0; 70], None), Err(StateError::TooLarge));
        assert_eq!(
            s.set(&"k".repeat(300), vec![], None),
            Err(StateError::TooLarge)
        );
        s.set("c", b"v".to_vec(), Some(0)).unwrap();
        s.set("d", b"v".to_vec(), None).unwrap();
        assert_eq!(s.usage().0, 3);
        assert!(s.usage().1 <= 64);
    }
}
