//! Idempotency keys: a publish that repeats a key within the window is answered with the
//! first offset and delivered once.
//!
//! A key is scoped by its publisher (the user, or the server API) and the channel, so one
//! member of a channel cannot suppress another's publication by guessing its key. The map
//! is bounded node-wide: past `limits.dedup_max_keys` the oldest keys are forgotten first
//! (and counted), so a flood of keys costs bounded memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::channel::ChannelName;
use crate::hub::Published;

const SHARDS: usize = 16;

/// Who published: the scope of an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Publisher {
    User(Arc<str>),
    Api,
}

/// The scoped idempotency key as one string, for a log that keeps keys itself (a
/// JetStream `Nats-Msg-Id`): publisher, channel and key, hashed so any key fits.
pub fn message_id(publisher: &Publisher, channel: &ChannelName, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match publisher {
        Publisher::User(user) => {
            h.update(b"u");
            h.update((user.len() as u64).to_le_bytes());
            h.update(user.as_bytes());
        }
        Publisher::Api => h.update(b"a"),
    }
    h.update((channel.as_str().len() as u64).to_le_bytes());
    h.update(channel.as_str().as_bytes());
    h.update(key.as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    publisher: Publisher,
    channel: ChannelName,
    key: Box<str>,
}

#[derive(Default)]
struct Shard {
    /// Key → (first offset, expires at ms).
    seen: HashMap<Key, (u64, u64)>,
    /// Keys in the order they were remembered (so also by expiry: the window is fixed).
    order: VecDeque<(Key, u64)>,
}

impl Shard {
    /// Forgets the oldest key; returns whether there was one.
    fn pop_oldest(&mut self) -> bool {
        let Some((key, expires)) = self.order.pop_front() else {
            return false;
        };
        // A key remembered again after it expired has a newer entry; keep that one.
        if self.seen.get(&key).is_some_and(|&(_, e)| e == expires) {
            self.seen.remove(&key);
        }
        true
    }
}

/// What [`Dedup::once`] did.
pub enum Once {
    /// The key is new: `publish` ran.
    Published(Published),
    /// The key was seen within the window: the first publication's offset.
    Repeat(u64),
}

pub struct Dedup {
    window_ms: u64,
    max_per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
}

impl Dedup {
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        Self {
            window_ms,
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<Shard> {
        &self.shards[channel.shard(SHARDS)]
    }

    fn key(publisher: &Publisher, channel: &ChannelName, key: &str) -> Key {
        Key {
            publisher: publisher.clone(),
            channel: channel.clone(),
            key: key.into(),
        }
    }

    /// The first offset of a key seen within the window (a cheap check before work that
    /// should not run twice, such as plugins; [`Dedup::once`] decides for good).
    pub fn seen(
        &self,
        publisher: &Publisher,
        channel: &ChannelName,
        key: &str,
        now: u64,
    ) -> Option<u64> {
        let shard = self.shard(channel).lock();
        let k = Self::key(publisher, channel, key);
        shard
            .seen
            .get(&k)
            .filter(|(_, expires)| *expires > now)
            .map(|&(offset, _)| offset)
    }

    /// Runs `publish` unless the key was seen in the window. The shard lock is held across
    /// `publish` (a synchronous hub call), so two racing repeats publish once. Returns the
    /// outcome and how many keys were forgotten early to stay under the cap.
    pub fn once(
        &self,
        publisher: &Publisher,
        channel: &ChannelName,
        key: &str,
        now: u64,
        publish: impl FnOnce() -> Published,
    ) -> (Once, usize) {
        let mut shard = self.shard(channel).lock();
        let k = Self::key(publisher, channel, key);
        if let Some(&(offset, expires)) = shard.seen.get(&k)
            && expires > now
        {
            return (Once::Repeat(offset), 0);
        }
        let published = publish();
        let expires = now + self.window_ms;
        let mut evicted = 0;
        while shard.seen.len() >= self.max_per_shard && shard.pop_oldest() {
            evicted += 1;
        }
        shard.seen.insert(k.clone(), (published.offset, expires));
        shard.order.push_back((k, expires));
        (Once::Published(published), evicted)
    }

    /// Forgets keys older than the window.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            while shard.order.front().is_some_and(|(_, e)| *e <= now) {
                shard.pop_oldest();
            }
        }
    }

    /// Keys remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().seen.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(offset: u64) -> Published {
        Published {
            offset,
            delivered: 1,
            overflowed: 0,
        }
    }

    #[test]
    fn keys_are_scoped_by_publisher_and_bounded() {
        let d = Dedup::new(60_000, SHARDS * 4);
        let ch = ChannelName::parse("chat:a").unwrap();
        let alice = Publisher::User("alice".into());
        let bob = Publisher::User("bob".into());
        assert!(matches!(
            d.once(&alice, &ch, "k", 0, || published(1)).0,
            Once::Published(_)
        ));
        assert!(matches!(
            d.once(&alice, &ch, "k", 1, || published(2)).0,
            Once::Repeat(1)
        ));
        // Another user, or the API, with the same key publishes.
        assert!(matches!(
            d.once(&bob, &ch, "k", 1, || published(3)).0,
            Once::Published(_)
        ));
        assert!(matches!(
            d.once(&Publisher::Api, &ch, "k", 1, || published(4)).0,
            Once::Published(_)
        ));
        assert_eq!(d.seen(&alice, &ch, "k", 2), Some(1));
        // A flood of keys on one channel stays under the shard's share of the cap.
        let mut evicted = 0;
        for i in 0..100 {
            evicted += d.once(&alice, &ch, &format!("f{i}"), 5, || published(i)).1;
        }
        assert!(d.len() <= 4, "{}", d.len());
        assert!(evicted >= 96, "{evicted}");
        // The window ends.
        d.sweep(60_006);
        assert_eq!(d.len(), 0);
    }
}
