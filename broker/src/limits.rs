//! Rate and connection limits, checked at the edge before work is queued.
//!
//! Rates use governor's GCRA limiters: keyed ones (per user, per channel, per source IP)
//! shard their state in a concurrent map, so no global lock sits on the publish path; a
//! connection's own limiters (frames, subscribes) live in its session, as the same GCRA
//! written out in 24 bytes ([`ConnectionLimiter`]; governor's direct limiter is 88). Connection counts are held by
//! RAII permits ([`HandshakePermit`], [`ConnectionPermit`], [`UserPermit`]) that give
//! their slot back on drop.

mod config;
mod handshakes;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

pub use config::{ConnectionsConfig, LimitsConfig, RateLimitsConfig};
pub use handshakes::{Admission, HandshakePermit};

use crate::channel::{ChannelName, Namespace, NamespaceConfig};
use crate::metrics::Limit;
use crate::protocol::{ErrorCode, ErrorReply};
use crate::rate::Rate;

/// A limit that was hit, with the sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Exceeded {
    pub limit: Limit,
    pub message: String,
}

impl Exceeded {
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(ErrorCode::RateLimited, self.message.clone())
    }
}

fn quota(rate: Rate, burst: u32) -> Option<Quota> {
    let rate = rate.get()?;
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// A keyed limiter with the numbers it enforces, for messages.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    rate: u32,
    burst: u32,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate, burst: u32) -> Option<Self> {
        quota(rate, burst).map(|q| Self {
            limiter: RateLimiter::keyed(q),
            rate: rate.raw(),
            burst: burst.max(rate.raw()),
        })
    }
}

/// The rate limits of the node.
pub struct RateLimits {
    /// One clock for every connection's limiters: making a clock calibrates it
    /// (`cpuid` and a timing loop), which cost a quarter of the broker's CPU while
    /// connections arrived when each limiter made its own.
    clock: QuantaClock,
    /// What the connection limiters count time from.
    start: QuantaInstant,
    /// (rate per second, burst) of each connection's own limiters.
    frames: Option<(u32, u32)>,
    subscribes: Option<(u32, u32)>,
    join_leave: Option<Keyed<ChannelName>>,
    user_publishes: Option<Keyed<Arc<str>>>,
    channel_publishes: Option<Keyed<ChannelName>>,
    /// Namespaces with their own channel publish rate.
    namespace_publishes: HashMap<String, Keyed<ChannelName>>,
    ip_connects: Option<Keyed<IpAddr>>,
    pub max_violations: u32,
    pub violation_window_ms: u64,
}

impl RateLimits {
    /// The node's limiters; `namespaces` may set their own channel publish rates.
    pub fn new(r: &RateLimitsConfig, namespaces: &BTreeMap<String, NamespaceConfig>) -> Self {
        let direct = |rate: Rate, burst: u32| rate.get().map(|r| (r.get(), burst.max(r.get())));
        let clock = QuantaClock::default();
        Self {
            start: clock.now(),
            clock,
            frames: direct(r.connection_frames_per_sec, r.connection_frames_burst),
            subscribes: direct(
                r.connection_subscribes_per_sec,
                r.connection_subscribes_burst,
            ),
            join_leave: Keyed::new(r.channel_join_leave_per_sec, r.channel_join_leave_burst),
            user_publishes: Keyed::new(r.user_publishes_per_sec, r.user_publishes_burst),
            channel_publishes: Keyed::new(r.channel_publishes_per_sec, r.channel_publishes_burst),
            namespace_publishes: namespaces
                .iter()
                .filter_map(|(name, ns)| {
                    Keyed::new(ns.channel_publishes_per_sec, ns.channel_publishes_burst)
                        .map(|k| (name.clone(), k))
                })
                .collect(),
            ip_connects: Keyed::new(r.ip_connects_per_sec, r.ip_connects_burst),
            max_violations: r.max_violations,
            violation_window_ms: r.violation_window_ms,
        }
    }

    /// A new connection's own frame limiter (`None`: unlimited).
    pub fn connection_frames(&self) -> Option<ConnectionLimiter> {
        self.frames
            .map(|_| ConnectionLimiter::new(Limit::ConnectionFrames))
    }

    /// A new connection's own subscribe/unsubscribe limiter (`None`: unlimited).
    pub fn connection_subscribes(&self) -> Option<ConnectionLimiter> {
        self.subscribes
            .map(|_| ConnectionLimiter::new(Limit::ConnectionSubscribes))
    }

    /// Now, for the connection limiters: nanoseconds since the node started.
    fn now_ns(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Whether `channel` may send its members one more `join` or `leave` push now.
    pub fn join_leave_allowed(&self, channel: &ChannelName) -> bool {
        self.join_leave
            .as_ref()
            .is_none_or(|k| k.limiter.check_key(channel).is_ok())
    }

    pub fn check_user_publish(&self, user: &Arc<str>) -> Result<(), Exceeded> {
        let Some(k) = &self.user_publishes else {
            return Ok(());
        };
        k.limiter.check_key(user).map_err(|_| Exceeded {
            limit: Limit::UserPublishes,
            message: format!(
                "user {user} is publishing faster than {} per second (burst {}) across its connections; slow down",
                k.rate, k.burst
            ),
        })
    }

    pub fn check_channel_publish(
        &self,
        ns: &Namespace,
        channel: &ChannelName,
    ) -> Result<(), Exceeded> {
        let Some(k) = self
            .namespace_publishes
            .get(&ns.name)
            .or(self.channel_publishes.as_ref())
        else {
            return Ok(());
        };
        k.limiter.check_key(channel).map_err(|_| Exceeded {
            limit: Limit::ChannelPublishes,
            message: format!(
                "channel {channel} takes at most {} publications per second (burst {}); slow down",
                k.rate, k.burst
            ),
        })
    }

    pub fn check_ip_connect(&self, ip: IpAddr) -> Result<(), Exceeded> {
        let Some(k) = &self.ip_connects else {
            return Ok(());
        };
        k.limiter.check_key(&ip).map_err(|_| Exceeded {
            limit: Limit::IpConnects,
            message: format!(
                "too many new connections from {ip}: at most {} per second (burst {}); retry with backoff",
                k.rate, k.burst
            ),
        })
    }

    /// Forgets keys whose limiters are back to full, so the maps do not grow without bound.
    pub fn sweep(&self) {
        if let Some(k) = &self.user_publishes {
            k.limiter.retain_recent();
        }
        if let Some(k) = &self.channel_publishes {
            k.limiter.retain_recent();
        }
        for k in self.namespace_publishes.values() {
            k.limiter.retain_recent();
        }
        if let Some(k) = &self.ip_connects {
            k.limiter.retain_recent();
        }
        if let Some(k) = &self.join_leave {
            k.limiter.retain_recent();
        }
    }
}

/// One of a connection's own limiters (frames; subscribe and unsubscribe requests): the
/// GCRA governor's direct limiter runs, kept in 16 bytes instead of its 88, as it sits in
/// every session: the theoretical arrival time of the next cell, in nanoseconds of the
/// node's limiter clock (atomic only so the session can be shared across its awaits;
/// only that session reads and writes it, so a load and a store do), and which limit it
/// is (its rate and burst are the node's, in [`RateLimits`]).
pub struct ConnectionLimiter {
    tat: AtomicU64,
    limit: Limit,
}

impl ConnectionLimiter {
    fn new(limit: Limit) -> Self {
        Self {
            tat: AtomicU64::new(0),
            limit,
        }
    }

    /// Counts one cell at `limits`' clock's now; `Err` when over the rate and burst.
    pub fn check(&self, limits: &RateLimits) -> Result<(), Exceeded> {
        let configured = match self.limit {
            Limit::ConnectionSubscribes => limits.subscribes,
            _ => limits.frames,
        };
        let Some((rate, burst)) = configured else {
            // (Made only for a configured limit; the configuration does not change.)
            return Ok(());
        };
        // As governor's GCRA: one cell every `t`, up to `burst` at once.
        let t = 1_000_000_000 / u64::from(rate);
        let tau = t * u64::from(burst - 1);
        let now = limits.now_ns();
        let tat = self.tat.load(Ordering::Relaxed);
        if now >= tat.saturating_sub(tau) {
            self.tat.store(tat.max(now) + t, Ordering::Relaxed);
            return Ok(());
        }
        Err(Exceeded {
            limit: self.limit,
            message: format!(
                "this connection sent more than {} {} per second (burst {}); slow down",
                rate,
                match self.limit {
                    Limit::ConnectionSubscribes => "subscribe and unsubscribe requests",
                    _ => "frames",
                },
                burst
            ),
        })
    }
}

/// Counts of open connections per node, source IP and user, and of handshakes in
/// progress per node and source IP.
#[derive(Debug)]
pub struct ConnectionLimits {
    config: ConnectionsConfig,
    node: AtomicU32,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
    by_user: Mutex<HashMap<Arc<str>, u32>>,
    handshakes: AtomicU32,
    handshakes_by_ip: Mutex<HashMap<IpAddr, handshakes::IpHandshakes>>,
}

/// A connection's slot on the node and for its source IP; given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

/// A connection's slot for its user; given back on drop.
#[derive(Debug)]
pub struct UserPermit {
    limits: Arc<ConnectionLimits>,
    user: Arc<str>,
}

impl ConnectionLimits {
    pub fn new(config: &ConnectionsConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            node: AtomicU32::new(0),
            by_ip: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
            handshakes: AtomicU32::new(0),
            handshakes_by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a node and IP slot, or says which limit is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Exceeded> {
        take_slot(&self.node, self.config.max, |max| Exceeded {
            limit: Limit::NodeConnections,
            message: format!(
                "this node is at its connection limit ({max}); retry later or on another node"
            ),
        })?;
        let mut by_ip = self.by_ip.lock();
        let count = by_ip.entry(ip).or_insert(0);
        if let Some(max) = self.config.max_per_ip.get()
            && *count >= max.get()
        {
            drop(by_ip);
            self.node.fetch_sub(1, Ordering::AcqRel);
            return Err(Exceeded {
                limit: Limit::IpConnections,
                message: format!(
                    "{ip} already has {} connections, the limit per source address; close some or retry later",
                    self.config.max_per_ip
                ),
            });
        }
        *count += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Takes a slot for the user, or says the user is at its limit.
    pub fn admit_user(self: &Arc<Self>, user: &Arc<str>) -> Result<UserPermit, Exceeded> {
        let mut by_user = self.by_user.lock();
        let count = by_user.entry(user.clone()).or_insert(0);
        if let Some(max) = self.config.max_per_user.get()
            && *count >= max.get()
        {
            return Err(Exceeded {
                limit: Limit::UserConnections,
                message: format!(
                    "user {user} already has {} connections, the limit per user; close one first",
                    self.config.max_per_user
                ),
            });
        }
        *count += 1;
        Ok(UserPermit {
            limits: self.clone(),
            user: user.clone(),
        })
    }

    pub fn open(&self) -> u32 {
        self.node.load(Ordering::Relaxed)
    }
}

fn release<K: Hash + Eq>(map: &Mutex<HashMap<K, u32>>, key: &K) {
    let mut map = map.lock();
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// Counts one more in `count`, or leaves it as it was and says why when that would pass
/// `cap`.
fn take_slot(
    count: &AtomicU32,
    cap: crate::rate::Cap,
    exceeded: impl FnOnce(NonZeroU32) -> Exceeded,
) -> Result<(), Exceeded> {
    let now = count.fetch_add(1, Ordering::AcqRel) + 1;
    match cap.get() {
        Some(max) if now > max.get() => {
            count.fetch_sub(1, Ordering::AcqRel);
            Err(exceeded(max))
        }
        _ => Ok(()),
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.node.fetch_sub(1, Ordering::AcqRel);
        release(&self.limits.by_ip, &self.ip);
    }
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        release(&self.limits.by_user, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Cap;

    #[test]
    fn connection_slots_come_back_on_drop() {
        let limits = ConnectionLimits::new(&ConnectionsConfig {
            max: Cap::new(2),
            max_per_ip: Cap::new(1),
            max_per_user: Cap::new(1),
            ..ConnectionsConfig::default()
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err().limit, Limit::IpConnections);
        let _p2 = limits.admit(b).unwrap();
        assert_eq!(
            limits
                .admit("127.0.0.3".parse().unwrap())
                .unwrap_err()
                .limit,
            Limit::NodeConnections
        );
        drop(p1);
        assert!(limits.admit(a).is_ok());
        let alice: Arc<str> = Arc::from("alice");
        let u = limits.admit_user(&alice).unwrap();
        assert_eq!(
            limits.admit_user(&alice).unwrap_err().limit,
            Limit::UserConnections
        );
        drop(u);
        assert!(limits.admit_user(&alice).is_ok());
    }

    #[test]
    fn a_connection_limiter_refills_at_its_rate() {
        let config = RateLimitsConfig {
            connection_subscribes_per_sec: Rate::new(1_000),
            connection_subscribes_burst: 1_000,
            ..RateLimitsConfig::default()
        };
        let limits = RateLimits::new(&config, &BTreeMap::new());
        let s = limits.connection_subscribes().unwrap();
        for _ in 0..1_000 {
            assert!(s.check(&limits).is_ok());
        }
        assert!(s.check(&limits).is_err(), "the burst of 1,000 is spent");
        // A cell comes back every millisecond.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(s.check(&limits).is_ok());
    }

    #[test]
    fn frame_limiter_allows_the_burst_then_refuses() {
        let config = RateLimitsConfig {
            connection_frames_per_sec: Rate::new(1),
            connection_frames_burst: 3,
            ..RateLimitsConfig::default()
        };
        let limits = RateLimits::new(&config, &BTreeMap::new());
        let f = limits.connection_frames().unwrap();
        for _ in 0..3 {
            assert!(f.check(&limits).is_ok());
        }
        let e = f.check(&limits).unwrap_err();
        assert!(
            e.message.contains("1 frames per second (burst 3)"),
            "{}",
            e.message
        );
    }
}
