//! Configuration: TOML file + `HOOKWIRE_*` environment overrides, validated up front.
//!
//! Load into plain structs ([`Config::load`]), then [`Config::validate`] collects every
//! problem at once, naming the key, the value and what is allowed. `Config::default()` is
//! what `config/hookwire.toml` spells out, but for the example plugins it loads.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::plugins::config::{OnError, PluginModuleConfig, PluginsConfig};
pub use env::EnvOverrides;

/// Secrets and paths that are never in the file.
pub const ENV_CONFIG: &str = "HOOKWIRE_CONFIG";
pub const ENV_JWT_SECRET: &str = "HOOKWIRE_JWT_SECRET";
pub const ENV_API_KEY: &str = "HOOKWIRE_API_KEY";
pub const ENV_ADMIN_KEY: &str = "HOOKWIRE_ADMIN_KEY";
pub const DEFAULT_CONFIG_PATH: &str = "config/hookwire.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client listener for WebSocket (`GET /ws`). `HOOKWIRE_WS_ADDR`.
    pub ws_addr: String,
    /// HTTP listener for health, metrics and the server API. `HOOKWIRE_ADMIN_ADDR`.
    pub admin_addr: String,
    /// This node's name (`node` in `connected`); empty: host name plus a random suffix.
    pub node_name: String,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rate_limits: RateLimitsConfig,
    pub connections: ConnectionsConfig,
    pub api: ApiConfig,
    pub history: HistoryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub plugins: PluginsConfig,
    /// Which namespace's settings apply to channel names without `:` (empty: such names
    /// answer `not_found`).
    pub default_namespace: String,
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted signature algorithms: any of `HS256`, `RS256`, `ES256`.
    pub algorithms: Vec<String>,
    /// PEM public key for RS256 tokens (empty: none).
    pub rsa_public_key_file: String,
    /// PEM public key for ES256 tokens (empty: none).
    pub ec_public_key_file: String,
    /// JWKS file; tokens pick a key by `kid` (empty: none).
    pub jwks_file: String,
    /// Required `iss` (empty: not checked).
    pub issuer: String,
    /// Required `aud` (empty: not checked).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest client frame; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Time from transport open to a successful `connect`, else close 4001. Also bounds
    /// the HTTP upgrade itself.
    pub handshake_timeout_ms: u64,
    /// Server keepalive ping interval.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long after a ping is closed.
    pub pong_timeout_ms: u64,
    /// Frames queued for one connection before it counts as a slow consumer (4009).
    pub outbound_queue_frames: usize,
    /// Per-connection read buffer; grows only for a larger frame.
    pub read_buffer_bytes: usize,
    /// Bytes gathered before a write to the socket (frames are batched up to this).
    pub write_buffer_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// A publish repeating an idempotency `key` within this window is not delivered again.
    pub dedup_window_ms: u64,
}

/// Rates are per second with a burst above them; 0 turns a limit off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Frames one connection may send.
    pub connection_frames_per_sec: u32,
    pub connection_frames_burst: u32,
    /// Publishes one user may make, across all of that user's connections.
    pub user_publishes_per_sec: u32,
    pub user_publishes_burst: u32,
    /// New connections from one source IP.
    pub ip_connects_per_sec: u32,
    pub ip_connects_burst: u32,
    /// Publishes into one channel, from every source (a namespace may override).
    pub channel_publishes_per_sec: u32,
    pub channel_publishes_burst: u32,
    /// A connection that gets this many `rate_limited` errors within `violation_window_ms`
    /// is sent `disconnect` 4008 and closed.
    pub max_violations: u32,
    pub violation_window_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Connections this node accepts; the next gets close 1013 (0: no limit).
    pub max: u32,
    /// Connections one user may hold at once (0: no limit).
    pub max_per_user: u32,
    /// Connections from one source IP at once (0: no limit).
    pub max_per_ip: u32,
    /// Origins browsers may connect from: exact (`https://app.example.com`) or with `*`
    /// (`https://*.example.com`, `http://localhost:*`). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Whether clients that send no `Origin` (non-browser clients) are accepted.
    pub allow_missing_origin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body of the server API, in bytes.
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A channel stream with no publication for this long is forgotten (its epoch ends).
    pub stream_idle_ttl_secs: u64,
    /// How often expired history is swept.
    pub sweep_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `hookwire=debug,info`, …
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time allowed from SIGTERM to exit.
    pub drain_ms: u64,
}

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
    pub channel_publishes_per_sec: u32,
    pub channel_publishes_burst: u32,
    /// Plugins whose `subscribe` and `publish` hooks run for this namespace, in order.
    pub plugins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "chat".to_string(),
            NamespaceConfig {
                history_size: 100,
                history_ttl_secs: 300,
                presence: true,
                join_leave: true,
                allow_publish: true,
                ..NamespaceConfig::default()
            },
        );
        namespaces.insert(
            "user".to_string(),
            NamespaceConfig {
                history_size: 50,
                history_ttl_secs: 3600,
                personal: true,
                ..NamespaceConfig::default()
            },
        );
        namespaces.insert(
            "news".to_string(),
            NamespaceConfig {
                history_size: 20,
                history_ttl_secs: 3600,
                public: true,
                ..NamespaceConfig::default()
            },
        );
        Self {
            ws_addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:9090".into(),
            node_name: String::new(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            connections: ConnectionsConfig::default(),
            api: ApiConfig::default(),
            history: HistoryConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            plugins: PluginsConfig::default(),
            default_namespace: String::new(),
            namespaces,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            rsa_public_key_file: String::new(),
            ec_public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 5,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            handshake_timeout_ms: 5_000,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            outbound_queue_frames: 4_096,
            read_buffer_bytes: 1_024,
            write_buffer_bytes: 16_384,
            max_subscriptions: 1_024,
            dedup_window_ms: 120_000,
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            connection_frames_per_sec: 200,
            connection_frames_burst: 400,
            user_publishes_per_sec: 100,
            user_publishes_burst: 200,
            ip_connects_per_sec: 50,
            ip_connects_burst: 200,
            channel_publishes_per_sec: 2_000,
            channel_publishes_burst: 4_000,
            max_violations: 20,
            violation_window_ms: 10_000,
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max: 100_000,
            max_per_user: 100,
            max_per_ip: 5_000,
            allowed_origins: vec![
                "http://localhost".into(),
                "http://localhost:*".into(),
                "http://127.0.0.1".into(),
                "http://127.0.0.1:*".into(),
            ],
            allow_missing_origin: true,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            stream_idle_ttl_secs: 3_600,
            sweep_interval_ms: 1_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_ms: 10_000 }
    }
}

/// Loading failed before validation: the file or an override could not be read as config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not valid: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("the config has {} problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Where the config came from, for the start-up log.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file read, or `None` when the embedded defaults were used.
    pub path: Option<PathBuf>,
    /// `HOOKWIRE_*` variables applied.
    pub applied_env: Vec<String>,
    /// `HOOKWIRE_*` variables that match no setting.
    pub unknown_env: Vec<String>,
}

impl Config {
    /// Reads `path` (or the embedded defaults when `path` is the default path and it does
    /// not exist), applies `HOOKWIRE_*` overrides from `env`, and validates.
    pub fn load(path: &Path, path_is_default: bool, env: &EnvOverrides) -> Result<LoadedConfig, Error> {
        let (table, used_path) = match std::fs::read_to_string(path) {
            Ok(text) => {
                let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                (table, Some(path.to_path_buf()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path_is_default => {
                (toml::Table::new(), None)
            }
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let parse_err = |message: String| Error::Parse {
            path: used_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<embedded defaults>")),
            message,
        };
        // Parse once to learn the namespaces, so their keys can be overridden too.
        let base: Config = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        let (table, applied_env, unknown_env) = env.apply(table, &base)?;
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        config.validate().map_err(Error::Invalid)?;
        Ok(LoadedConfig {
            config,
            path: used_path,
            applied_env,
            unknown_env,
        })
    }

    /// Checks every setting; returns every problem, each naming key, value and what is allowed.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        for (key, value) in [("ws_addr", &self.ws_addr), ("admin_addr", &self.admin_addr)] {
            if value.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "{key} = {value:?}: must be an IP address and port such as \"127.0.0.1:8080\" (port 0 picks a free port)"
                ));
            }
        }
        if !self.node_name.is_empty() && !self.node_name.bytes().all(crate::channel::is_name_byte) {
            errs.push(format!(
                "node_name = {:?}: use only A-Z a-z 0-9 _ . : @ / = -",
                self.node_name
            ));
        }
        let bindings = self
            .namespaces
            .iter()
            .map(|(ns, c)| (ns.as_str(), c.plugins.as_slice()));
        self.plugins.validate(bindings, &mut errs);
        let a = &self.auth;
        if a.algorithms.is_empty() {
            errs.push(
                "auth.algorithms = []: list at least one of \"HS256\", \"RS256\", \"ES256\"".into(),
            );
        }
        for alg in &a.algorithms {
            match alg.as_str() {
                "HS256" => {}
                "RS256" if a.rsa_public_key_file.is_empty() && a.jwks_file.is_empty() => errs.push(
                    "auth.algorithms has \"RS256\" but neither auth.rsa_public_key_file nor auth.jwks_file is set".into(),
                ),
                "ES256" if a.ec_public_key_file.is_empty() && a.jwks_file.is_empty() => errs.push(
                    "auth.algorithms has \"ES256\" but neither auth.ec_public_key_file nor auth.jwks_file is set".into(),
                ),
                "RS256" | "ES256" => {}
                other => errs.push(format!(
                    "auth.algorithms has {other:?}: allowed are \"HS256\", \"RS256\", \"ES256\" (\"none\" is never accepted)"
                )),
            }
        }
        if a.leeway_secs > 300 {
            errs.push(format!(
                "auth.leeway_secs = {}: must be 0 to 300",
                a.leeway_secs
            ));
        }
        let l = &self.limits;
        range(
            &mut errs,
            "limits.max_frame_bytes",
            l.max_frame_bytes as u64,
            256,
            16 << 20,
        );
        range(
            &mut errs,
            "limits.handshake_timeout_ms",
            l.handshake_timeout_ms,
            100,
            120_000,
        );
        range(
            &mut errs,
            "limits.ping_interval_ms",
            l.ping_interval_ms,
            100,
            600_000,
        );
        range(
            &mut errs,
            "limits.pong_timeout_ms",
            l.pong_timeout_ms,
            100,
            600_000,
        );
        range(
            &mut errs,
            "limits.outbound_queue_frames",
            l.outbound_queue_frames as u64,
            16,
            1 << 20,
        );
        range(
            &mut errs,
            "limits.read_buffer_bytes",
            l.read_buffer_bytes as u64,
            256,
            1 << 20,
        );
        range(
            &mut errs,
            "limits.write_buffer_bytes",
            l.write_buffer_bytes as u64,
            0,
            16 << 20,
        );
        range(
            &mut errs,
            "limits.max_subscriptions",
            l.max_subscriptions as u64,
            1,
            1 << 20,
        );
        range(
            &mut errs,
            "limits.dedup_window_ms",
            l.dedup_window_ms,
            0,
            86_400_000,
        );
        let r = &self.rate_limits;
        for (key, rate, burst) in [
            (
                "connection_frames",
                r.connection_frames_per_sec,
                r.connection_frames_burst,
            ),
            (
                "user_publishes",
                r.user_publishes_per_sec,
                r.user_publishes_burst,
            ),
            ("ip_connects", r.ip_connects_per_sec, r.ip_connects_burst),
            (
                "channel_publishes",
                r.channel_publishes_per_sec,
                r.channel_publishes_burst,
            ),
        ] {
            rate_and_burst(&mut errs, &format!("rate_limits.{key}"), rate, burst);
        }
        range(
            &mut errs,
            "rate_limits.max_violations",
            u64::from(r.max_violations),
            1,
            1_000_000,
        );
        range(
            &mut errs,
            "rate_limits.violation_window_ms",
            r.violation_window_ms,
            100,
            3_600_000,
        );
        for origin in &self.connections.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                errs.push(format!(
                    "connections.allowed_origins has {origin:?}: an origin is scheme://host[:port] with no path, e.g. \"https://app.example.com\" or \"https://*.example.com\""
                ));
            }
        }
        range(
            &mut errs,
            "api.max_body_bytes",
            self.api.max_body_bytes as u64,
            1024,
            64 << 20,
        );
        range(
            &mut errs,
            "history.stream_idle_ttl_secs",
            self.history.stream_idle_ttl_secs,
            1,
            30 * 86_400,
        );
        range(
            &mut errs,
            "history.sweep_interval_ms",
            self.history.sweep_interval_ms,
            10,
            600_000,
        );
        range(
            &mut errs,
            "shutdown.drain_ms",
            self.shutdown.drain_ms,
            0,
            600_000,
        );
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errs.push(format!(
                "log.level = {:?}: must be a level (error, warn, info, debug, trace) or a tracing filter such as \"hookwire=debug,info\"",
                self.log.level
            ));
        }
        if !self.default_namespace.is_empty() {
            match self.namespaces.get(&self.default_namespace) {
                None => errs.push(format!(
                    "default_namespace = {:?}: must name a namespace in [namespaces] ({}), or be empty",
                    self.default_namespace,
                    self.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(ns) if ns.personal => errs.push(format!(
                    "default_namespace = {:?}: a personal namespace cannot serve names without ':'",
                    self.default_namespace
                )),
                Some(_) => {}
            }
        }
        for (name, ns) in &self.namespaces {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b != b':' && crate::channel::is_name_byte(b))
            {
                errs.push(format!(
                    "namespaces.{name:?}: a namespace name is 1 or more of A-Z a-z 0-9 _ . @ / = - (no ':')"
                ));
            }
            namespace(&mut errs, &format!("namespaces.{name}"), ns);
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    pub fn ws_socket_addr(&self) -> SocketAddr {
        self.ws_addr.parse().expect("validated")
    }

    pub fn admin_socket_addr(&self) -> SocketAddr {
        self.admin_addr.parse().expect("validated")
    }
}

fn range(errs: &mut Vec<String>, key: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        errs.push(format!("{key} = {value}: must be {min} to {max}"));
    }
}

fn rate_and_burst(errs: &mut Vec<String>, key: &str, rate: u32, burst: u32) {
    if rate > 0 && burst < rate {
        errs.push(format!(
            "{key}_burst = {burst}: must be at least {key}_per_sec ({rate}) when the limit is on"
        ));
    }
}

fn namespace(errs: &mut Vec<String>, key: &str, ns: &NamespaceConfig) {
    rate_and_burst(
        errs,
        &format!("{key}.channel_publishes"),
        ns.channel_publishes_per_sec,
        ns.channel_publishes_burst,
    );
    range(
        errs,
        &format!("{key}.history_size"),
        ns.history_size as u64,
        0,
        1_000_000,
    );
    if ns.history_size > 0 && ns.history_ttl_secs == 0 {
        errs.push(format!(
            "{key}.history_ttl_secs = 0 with history_size = {}: history needs a TTL of 1 second or more",
            ns.history_size
        ));
    }
    range(
        errs,
        &format!("{key}.history_ttl_secs"),
        ns.history_ttl_secs,
        0,
        30 * 86_400,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hookwire.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut shipped: Config = toml::from_str(&text).unwrap();
        assert!(shipped.validate().is_ok(), "{:?}", shipped.validate());
        // The example plugins are the one addition to the defaults.
        assert_eq!(shipped.plugins.modules.len(), 5);
        shipped.plugins.modules.clear();
        shipped.plugins.connection.clear();
        for ns in shipped.namespaces.values_mut() {
            ns.plugins.clear();
        }
        assert_eq!(shipped, Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn validation_names_key_value_and_allowed() {
        let mut c = Config {
            ws_addr: "localhost".into(),
            ..Config::default()
        };
        c.limits.max_frame_bytes = 3;
        c.auth.algorithms = vec!["none".into(), "RS256".into()];
        c.namespaces.get_mut("chat").unwrap().history_ttl_secs = 0;
        let errs = c.validate().unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("ws_addr = \"localhost\""), "{all}");
        assert!(
            all.contains("limits.max_frame_bytes = 3: must be 256 to 16777216"),
            "{all}"
        );
        assert!(all.contains("\"none\" is never accepted"), "{all}");
        assert!(all.contains("RS256"), "{all}");
        assert!(
            all.contains("namespaces.chat.history_ttl_secs = 0"),
            "{all}"
        );
        assert_eq!(errs.len(), 5, "{all}");
    }
}
