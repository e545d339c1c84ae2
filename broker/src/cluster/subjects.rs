//! The NATS names a cluster uses, all under `cluster.subject_prefix` (`P`):
//!
//! ```text
//! P.h.<ns>.<channel>   JetStream: a history namespace's stream (one per namespace)
//! P.d.<ns>.<channel>   core: what nodes subscribe to for a channel; the stream
//!                      republishes here (with Nats-Sequence, Nats-Last-Sequence), and
//!                      namespaces without history publish here directly
//! P.nodes              core: heartbeats (a node's name)
//! P.q.<what>           core: questions every node answers (presence, channels,
//!                      disconnect a user)
//! P.api.publish        core: NATS ingress (server-api.md), a queue group
//! P.barrier            core: never subscribed; a request to it comes back "no
//!                      responders" from NATS itself once the server has handled
//!                      everything sent before it on that connection
//! P_<ns>               JetStream stream names;  KV bucket P_revocations
//! ```
//!
//! Channel and namespace names may hold `.`, which NATS takes as a token separator, so
//! it is written `%` (which names never hold).

/// A name as one subject token.
pub fn token(name: &str) -> String {
    name.replace('.', "%")
}

/// A namespace name as part of a stream or bucket name (`A-Z a-z 0-9 -` kept, every other
/// byte, `_` included, written `_xx`).
pub fn stream_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The subjects of one cluster.
#[derive(Clone, Debug)]
pub struct Subjects {
    pub prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn stored(&self, ns: &str, channel: &str) -> String {
        format!("{}.h.{}.{}", self.prefix, token(ns), token(channel))
    }

    pub fn stored_all(&self, ns: &str) -> String {
        format!("{}.h.{}.>", self.prefix, token(ns))
    }

    pub fn delivered(&self, ns: &str, channel: &str) -> String {
        format!("{}.d.{}.{}", self.prefix, token(ns), token(channel))
    }

    pub fn delivered_all(&self, ns: &str) -> String {
        format!("{}.d.{}.>", self.prefix, token(ns))
    }

    pub fn stream(&self, ns: &str) -> String {
        format!("{}_{}", self.prefix, stream_part(ns))
    }

    pub fn revocations_bucket(&self) -> String {
        format!("{}_revocations", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    pub fn question(&self, what: &str) -> String {
        format!("{}.q.{what}", self.prefix)
    }

    pub fn barrier(&self) -> String {
        format!("{}.barrier", self.prefix)
    }

    pub fn ingress(&self) -> String {
        format!("{}.api.publish", self.prefix)
    }
}

/// A KV key for any user id (KV keys allow `[-/_=.a-zA-Z0-9]`): hex.
pub fn kv_key(user: &str) -> String {
    user.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn from_kv_key(key: &str) -> Option<String> {
    if !key.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_stay_one_token() {
        let s = Subjects::new("hw");
        assert_eq!(s.stored("chat", "chat:a.b"), "hw.h.chat.chat:a%b");
        assert_eq!(s.delivered("x.y", "x.y:..z"), "hw.d.x%y.x%y:%%z");
        assert_eq!(s.stream("a_b.c"), "hw_a_5fb_2ec");
        assert_eq!(from_kv_key(&kv_key("ü ser")).as_deref(), Some("ü ser"));
    }
}
