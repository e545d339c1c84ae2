//! The publish pipeline: every publication, from a client, the server API or (later) NATS
//! ingress, goes through [`Pipeline::publish`]: name → namespace → permission → rate
//! limits → hooks (plugins) → idempotency → hub.
//!
//! Hooks run once per publication, never per delivery; a pipeline without hooks pays
//! one empty slice check.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::access;
use crate::auth::Claims;
use crate::channel::{ChannelName, Namespace, Namespaces};
use crate::hub::{Hub, NewPublication, Published};
use crate::limits::{Exceeded, RateLimits};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ErrorReply, now_ms};
use std::time::Instant;

/// Where a publication comes from. Client publications are checked against the token;
/// server-side sources are trusted.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Client {
        client: &'a str,
        claims: &'a Claims,
        /// The user id, shared (the per-user limiter's key).
        user: &'a Arc<str>,
    },
    Api,
}

impl Source<'_> {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Client { .. } => "client",
            Self::Api => "api",
        }
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Client { claims, .. } => Some(&claims.sub),
            Self::Api => None,
        }
    }
}

pub struct PublishRequest<'a> {
    pub source: Source<'a>,
    pub channel: &'a str,
    pub data: &'a RawValue,
    /// Idempotency key: a repeat within the window is not delivered again.
    pub key: Option<&'a str>,
}

/// A successful publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub channel: ChannelName,
    pub offset: u64,
    /// True when the key was seen within the window: nothing was delivered this time.
    pub duplicate: bool,
    pub delivered: usize,
}

/// What a hook sees of a publication.
pub struct PublishEvent<'a> {
    pub source: Source<'a>,
    pub channel: &'a ChannelName,
    pub namespace: &'a Namespace,
    pub data: &'a RawValue,
}

/// A hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject(String),
}

/// A step every publication of a namespace passes before the hub (plugins plug in here).
pub trait PublishHook: Send + Sync {
    fn name(&self) -> &str;
    fn on_publish(&self, event: &PublishEvent<'_>) -> Verdict;
}

pub struct Pipeline {
    hub: Arc<Hub>,
    namespaces: Arc<Namespaces>,
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
    hooks: Vec<Arc<dyn PublishHook>>,
    dedup: Dedup,
}

impl Pipeline {
    pub fn new(
        hub: Arc<Hub>,
        namespaces: Arc<Namespaces>,
        limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
        dedup_window_ms: u64,
    ) -> Self {
        Self {
            hub,
            namespaces,
            limits,
            metrics,
            hooks: Vec::new(),
            dedup: Dedup::new(dedup_window_ms),
        }
    }

    pub fn with_hook(mut self, hook: Arc<dyn PublishHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    pub fn publish(&self, req: PublishRequest<'_>) -> Result<Accepted, ErrorReply> {
        let accepted_at = Instant::now();
        let (channel, ns) = access::resolve(&self.namespaces, req.channel)?;
        if let Source::Client { claims, user, .. } = req.source {
            access::can_publish(&ns, &channel, claims)?;
            self.limits
                .check_user_publish(user)
                .map_err(|e| self.limited(&e))?;
        }
        self.limits
            .check_channel_publish(&ns, &channel)
            .map_err(|e| self.limited(&e))?;
        for hook in &self.hooks {
            let event = PublishEvent {
                source: req.source,
                channel: &channel,
                namespace: &ns,
                data: req.data,
            };
            if let Verdict::Reject(reason) = hook.on_publish(&event) {
                return Err(ErrorReply::new(
                    ErrorCode::Rejected,
                    format!("{} refused the publication: {reason}", hook.name()),
                ));
            }
        }
        let publish = || {
            self.hub.publish(
                &ns,
                NewPublication {
                    channel: &channel,
                    user: req.source.user(),
                    data: req.data,
                    meta: None,
                    accepted_at,
                },
            )
        };
        let (published, duplicate) = match req.key {
            None => (publish(), false),
            Some(key) => self.dedup.once(&channel, key, publish),
        };
        if !duplicate {
            self.metrics
                .publication(req.source.label(), published.delivered as u64);
        }
        Ok(Accepted {
            channel,
            offset: published.offset,
            duplicate,
            delivered: published.delivered,
        })
    }

    fn limited(&self, e: &Exceeded) -> ErrorReply {
        self.metrics.rate_limited(e.limit);
        e.to_reply()
    }

    /// Forgets idempotency keys older than the window.
    pub fn sweep(&self, now_ms: u64) {
        self.dedup.sweep(now_ms);
    }
}

const DEDUP_SHARDS: usize = 16;

/// (channel, key) → (first offset, expires at ms).
type KeyMap = HashMap<(ChannelName, Box<str>), (u64, u64)>;

/// Idempotency keys per channel, remembered for a window.
struct Dedup {
    window_ms: u64,
    shards: Box<[Mutex<KeyMap>]>,
}

impl Dedup {
    fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            shards: (0..DEDUP_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    /// Runs `publish` unless the key was seen in the window; returns the first offset then.
    /// The shard lock is held across `publish`, so two racing repeats publish once.
    fn once(
        &self,
        channel: &ChannelName,
        key: &str,
        publish: impl FnOnce() -> Published,
    ) -> (Published, bool) {
        let now = now_ms();
        let mut shard = self.shards[channel.shard(DEDUP_SHARDS)].lock();
        let k = (channel.clone(), Box::<str>::from(key));
        if let Some(&(offset, expires)) = shard.get(&k)
            && expires > now
        {
            let seen = Published {
                offset,
                delivered: 0,
                overflowed: 0,
            };
            return (seen, true);
        }
        let published = publish();
        shard.insert(k, (published.offset, now + self.window_ms));
        (published, false)
    }

    fn sweep(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            shard.lock().retain(|_, (_, expires)| *expires > now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::history::MemoryHistory;

    struct NoSwearing;
    impl PublishHook for NoSwearing {
        fn name(&self) -> &str {
            "no-swearing"
        }
        fn on_publish(&self, event: &PublishEvent<'_>) -> Verdict {
            if event.data.get().contains("darn") {
                Verdict::Reject("mind your language".into())
            } else {
                Verdict::Allow
            }
        }
    }

    fn pipeline() -> Pipeline {
        let config = Config::default();
        let namespaces = Arc::new(Namespaces::from_config(&config));
        let hub = Arc::new(Hub::new(Arc::new(MemoryHistory::new())));
        let limits = Arc::new(RateLimits::new(&config));
        Pipeline::new(hub, namespaces, limits, Arc::new(Metrics::new()), 60_000)
            .with_hook(Arc::new(NoSwearing))
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn hooks_refuse_with_their_reason() {
        let p = pipeline();
        let data = raw("\"darn\"");
        let err = p
            .publish(PublishRequest {
                source: Source::Api,
                channel: "chat:a",
                data: &data,
                key: None,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Rejected);
        assert!(err.message.contains("mind your language"));
    }

    #[test]
    fn a_repeated_key_publishes_once_and_answers_the_first_offset() {
        let p = pipeline();
        let data = raw("1");
        let req = |key| PublishRequest {
            source: Source::Api,
            channel: "chat:a",
            data: &data,
            key,
        };
        let first = p.publish(req(Some("k1"))).unwrap();
        let again = p.publish(req(Some("k1"))).unwrap();
        assert_eq!(first.offset, again.offset);
        assert!(again.duplicate);
        let other = p.publish(req(Some("k2"))).unwrap();
        assert_eq!(other.offset, first.offset + 1);
        p.sweep(now_ms() + 120_000);
        assert!(!p.publish(req(Some("k1"))).unwrap().duplicate);
    }
}
