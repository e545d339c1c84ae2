//! Channel names, namespaces and the permission patterns of token claims.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rate::Rate;
use crate::validation::Problems;

/// `[namespaces.NAME]`: the settings of every channel `NAME:…`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Publications kept per channel (0: no history, offsets are 0).
    pub history_size: usize,
    /// How long a publication stays in history, in seconds.
    pub history_ttl_secs: u64,
    /// Whether `presence` answers for channels of this namespace.
    pub presence: bool,
    /// Whether subscribers get `join` and `leave` pushes.
    pub join_leave: bool,
    /// Whether clients may publish (the server API always may).
    pub allow_publish: bool,
    /// Channel `ns:<sub>` is only for the user `<sub>`.
    pub personal: bool,
    /// Any connected client may subscribe, whatever its `channels` claim.
    pub public: bool,
    /// Publishes per second into one channel of this namespace, and the burst
    /// (0: `rate_limits.channel_publishes_*`).
    pub channel_publishes_per_sec: Rate,
    pub channel_publishes_burst: u32,
    /// Plugins whose `subscribe` and `publish` hooks run for this namespace, in order.
    pub plugins: Vec<String>,
    /// Publications are worthless when late ("typing", cursors): no history, no
    /// recovery, and WebTransport clients get them as unreliable datagrams, never
    /// queued behind reliable frames (WebSocket clients get them as usual).
    pub volatile: bool,
}

impl NamespaceConfig {
    /// Checks one namespace; `name` is its key in `[namespaces]`.
    pub fn validate(&self, name: &str, p: &mut Problems) {
        if name.is_empty() || !name.bytes().all(|b| b != b':' && is_name_byte(b)) {
            p.push(format!(
                "namespaces.{name:?}: a namespace name is 1 or more of A-Z a-z 0-9 _ . @ / = - (no ':')"
            ));
        }
        let key = format!("namespaces.{name}");
        p.rate_and_burst(
            &format!("{key}.channel_publishes"),
            self.channel_publishes_per_sec,
            self.channel_publishes_burst,
        );
        p.range(
            &format!("{key}.history_size"),
            self.history_size as u64,
            0,
            1_000_000,
        );
        if self.volatile && self.history_size > 0 {
            p.push(format!(
                "{key}.volatile = true with history_size = {}: a volatile namespace keeps no history; set history_size = 0",
                self.history_size
            ));
        }
        if self.history_size > 0 && self.history_ttl_secs == 0 {
            p.push(format!(
                "{key}.history_ttl_secs = 0 with history_size = {}: history needs a TTL of 1 second or more",
                self.history_size
            ));
        }
        p.range(
            &format!("{key}.history_ttl_secs"),
            self.history_ttl_secs,
            0,
            30 * 86_400,
        );
    }
}

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// A channel name checked against protocol v1: 1 to 255 bytes of `[A-Za-z0-9_.:@/=-]`.
///
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused; the `Display` text is sent to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the channel name is empty; names are 1 to 255 bytes of A-Z a-z 0-9 _ . : @ / = -")]
    Empty,
    #[error("the channel name is {0} bytes; the limit is 255")]
    TooLong(usize),
    #[error(
        "the channel name contains {0:?}, which is not allowed; use only A-Z a-z 0-9 _ . : @ / = -"
    )]
    BadChar(char),
}

pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'=' | b'-')
}

impl ChannelName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_CHANNEL_BYTES {
            return Err(NameError::TooLong(name.len()));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !c.is_ascii() || !is_name_byte(*c as u8))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// A stable shard index in `0..shards` (FNV-1a of the name).
    pub fn shard(&self, shards: usize) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % shards as u64) as usize
    }

    /// Whether both are the same allocation (not only the same name).
    pub fn shares_with(&self, other: &ChannelName) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The namespace: the part before the first `:`, or `None` for the default namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A configured namespace, resolved once at start.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
    pub config: NamespaceConfig,
}

impl Namespace {
    pub fn keeps_history(&self) -> bool {
        self.config.history_size > 0
    }

    /// Delivered as datagrams to WebTransport clients (see [`NamespaceConfig::volatile`]).
    pub fn volatile(&self) -> bool {
        self.config.volatile
    }
}

/// A map keyed by names (channels, streams, namespaces) on a publication's path: foldhash,
/// seeded at random per process, costs a fraction of std's SipHash on short keys and
/// still keeps a client from choosing names that collide.
pub type NameMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The namespaces of the running config.
#[derive(Debug, Default)]
pub struct Namespaces {
    by_name: NameMap<String, Arc<Namespace>>,
    /// Serves channel names without `:`.
    default: Option<Arc<Namespace>>,
}

impl Namespaces {
    /// The namespaces of `[namespaces]`; `default_namespace` (may be empty) serves channel
    /// names without `:`.
    pub fn new(namespaces: &BTreeMap<String, NamespaceConfig>, default_namespace: &str) -> Self {
        let by_name: NameMap<_, _> = namespaces
            .iter()
            .map(|(name, ns)| {
                let ns = Namespace {
                    name: name.clone(),
                    config: ns.clone(),
                };
                (name.clone(), Arc::new(ns))
            })
            .collect();
        let default = by_name.get(default_namespace).cloned();
        Self { by_name, default }
    }

    /// Whether `[namespaces]` has this one.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn resolve(&self, channel: &ChannelName) -> Option<&Arc<Namespace>> {
        match channel.namespace() {
            Some(ns) => self.by_name.get(ns),
            None => self.default.as_ref(),
        }
    }
}

/// Matches a glob pattern from a token claim: `*` is any run of bytes (`:` included),
/// `?` is one byte; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// True when any pattern matches the channel.
pub fn any_match(patterns: &[String], channel: &ChannelName) -> bool {
    patterns.iter().any(|p| glob_match(p, channel.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(ChannelName::parse("chat:lobby").is_ok());
        assert!(ChannelName::parse("a_b.c:d@e/f=g-h").is_ok());
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        assert_eq!(
            ChannelName::parse("chat lobby"),
            Err(NameError::BadChar(' '))
        );
        assert_eq!(ChannelName::parse("chat:é"), Err(NameError::BadChar('é')));
        assert_eq!(ChannelName::parse("a*b"), Err(NameError::BadChar('*')));
    }

    #[test]
    fn finds_the_namespace() {
        assert_eq!(
            ChannelName::parse("chat:a:b").unwrap().namespace(),
            Some("chat")
        );
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), None);
        assert_eq!(ChannelName::parse(":x").unwrap().namespace(), Some(""));
    }

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:lobby"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chatter:x"));
        assert!(glob_match("*", "anything:at/all"));
        assert!(glob_match("chat:room-?", "chat:room-1"));
        assert!(!glob_match("chat:room-?", "chat:room-12"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("news", "news"));
        assert!(!glob_match("news", "news2"));
    }
}
