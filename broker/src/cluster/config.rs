//! `[cluster]`: joining other nodes through NATS, with its validation.

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

/// Where JetStream keeps the streams this cluster makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// `[cluster]`. With no `nats_url` the node runs alone, in memory (the default).
/// Secrets come from the environment only: `HOOKWIRE_NATS_TOKEN`,
/// `HOOKWIRE_NATS_PASSWORD`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (any one will do; the client fails over).
    /// `HOOKWIRE_NATS_URL` (comma-separated). Empty: single node.
    pub nats_url: Vec<String>,
    /// Every subject and stream this cluster uses starts with it.
    pub subject_prefix: String,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials_file: String,
    /// User name for NATS user/password auth (the password: `HOOKWIRE_NATS_PASSWORD`).
    pub user: String,
    /// Refuse a NATS connection without TLS.
    pub require_tls: bool,
    /// PEM file of the CA that signed the NATS servers' certificates.
    pub tls_ca_file: String,
    /// PEM client certificate and key, for NATS servers that verify clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// JetStream storage of the history streams and the revocation bucket.
    pub storage: Storage,
    /// JetStream replicas of each stream (1 for a single NATS server).
    pub replicas: u64,
    /// A node that sent no heartbeat for this long is taken as gone: presence and
    /// cluster-wide answers stop waiting for it. Heartbeats go out three times as often.
    pub node_timeout_ms: u64,
    /// How long a cluster-wide read (presence, `/api/channels?scope=cluster`) waits for
    /// the other nodes' answers.
    pub gather_timeout_ms: u64,
    /// How long a publish to a history namespace waits for JetStream to store it before
    /// the client is answered `unavailable`.
    pub publish_timeout_ms: u64,
    /// NATS messages buffered per channel subscription on this node; past it NATS
    /// reports a slow consumer and the channel is read again from its stream.
    pub subscription_capacity: u64,
    /// How long a channel's NATS interest outlives its last local subscriber (so a
    /// client that reconnects does not reload the stream).
    pub linger_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: Vec::new(),
            subject_prefix: "hookwire".into(),
            credentials_file: String::new(),
            user: String::new(),
            require_tls: false,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            storage: Storage::File,
            replicas: 1,
            node_timeout_ms: 6_000,
            gather_timeout_ms: 500,
            publish_timeout_ms: 5_000,
            subscription_capacity: 65_536,
            linger_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this node joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }

    pub fn validate<'a>(&self, namespaces: impl Iterator<Item = &'a str>, p: &mut Problems) {
        if !self.enabled() {
            return;
        }
        for url in &self.nats_url {
            let ok = url
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "nats" | "tls") && !rest.is_empty());
            if !ok {
                p.push(format!(
                    "cluster.nats_url: {url:?} is not a NATS URL; use nats://host:port or tls://host:port"
                ));
            }
        }
        let prefix_ok = !self.subject_prefix.is_empty()
            && self.subject_prefix.len() <= 32
            && self
                .subject_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            p.push(format!(
                "cluster.subject_prefix = {:?}: use 1 to 32 of A-Z a-z 0-9 - _",
                self.subject_prefix
            ));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            p.push(
                "cluster.tls_cert_file and cluster.tls_key_file go together: set both or neither",
            );
        }
        for (key, path) in [
            ("cluster.credentials_file", &self.credentials_file),
            ("cluster.tls_ca_file", &self.tls_ca_file),
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
        ] {
            if !path.is_empty() && !std::path::Path::new(path).is_file() {
                p.push(format!("{key} = {path:?}: no such file"));
            }
        }
        p.range("cluster.replicas", self.replicas, 1, 5);
        p.range("cluster.node_timeout_ms", self.node_timeout_ms, 300, 30_000);
        p.range(
            "cluster.gather_timeout_ms",
            self.gather_timeout_ms,
            10,
            10_000,
        );
        p.range(
            "cluster.publish_timeout_ms",
            self.publish_timeout_ms,
            100,
            60_000,
        );
        p.range(
            "cluster.subscription_capacity",
            self.subscription_capacity,
            1,
            1 << 24,
        );
        // At least a moment: a subscribe joins right after its link is ready.
        p.range("cluster.linger_ms", self.linger_ms, 100, 600_000);
        for ns in namespaces {
            if ns.len() > 64 {
                p.push(format!(
                    "namespaces.{ns:?}: in a cluster a namespace name is at most 64 bytes (it names a JetStream stream)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &ClusterConfig) -> Vec<String> {
        let mut p = Problems::default();
        c.validate(["chat"].into_iter(), &mut p);
        p.into_result().err().unwrap_or_default()
    }

    #[test]
    fn a_cluster_is_checked_only_when_on() {
        let off = ClusterConfig {
            subject_prefix: "bad prefix".into(),
            ..ClusterConfig::default()
        };
        assert!(problems(&off).is_empty());
        let on = ClusterConfig {
            nats_url: vec!["nats://127.0.0.1:4222".into(), "127.0.0.1:4222".into()],
            subject_prefix: "bad.prefix".into(),
            tls_cert_file: "/nonexistent.pem".into(),
            replicas: 7,
            ..ClusterConfig::default()
        };
        let p = problems(&on).join("\n");
        for needle in [
            "\"127.0.0.1:4222\" is not a NATS URL",
            "subject_prefix",
            "tls_key_file go together",
            "no such file",
            "cluster.replicas",
        ] {
            assert!(p.contains(needle), "{needle}: {p}");
        }
    }
}
