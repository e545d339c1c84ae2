//! Configuration: TOML file + `HOOKWIRE_*` environment overrides, validated up front.
//!
//! Each subsystem owns its section and that section's validation (`[auth]` in
//! `auth::config`, `[limits]`, `[rate_limits]` and `[connections]` in `limits::config`,
//! `[namespaces]` in `channel`, `[history]` in `history`, `[api]` in `admin`, `[log]`
//! in `logging`, `[shutdown]` in `server`, `[plugins]` here until the plugins module takes
//! it); the root [`Config`] only gathers them, so the whole shape reads in one place.
//! Load into plain structs ([`Config::load`]), then [`Config::validate`] collects every
//! problem at once, naming the key, the value and what is allowed. `Config::default()` is
//! what `config/hookwire.toml` spells out, but for the example plugins it loads.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::admin::ApiConfig;
pub use crate::auth::{AuthConfig, TokenAlgorithm};
pub use crate::channel::NamespaceConfig;
pub use crate::history::HistoryConfig;
pub use crate::limits::{ConnectionsConfig, LimitsConfig, RateLimitsConfig};
pub use crate::logging::{LogConfig, LogFormat};
pub use crate::server::ShutdownConfig;
use crate::validation::Problems;
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
    #[serde(deserialize_with = "listen_addr")]
    pub ws_addr: SocketAddr,
    /// HTTP listener for health, metrics and the server API. `HOOKWIRE_ADMIN_ADDR`.
    #[serde(deserialize_with = "listen_addr")]
    pub admin_addr: SocketAddr,
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

/// A listener address, with a message that says what is allowed.
fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address: must be an IP address and port such as \"127.0.0.1:8080\" (port 0 picks a free port)"
        ))
    })
}

/// What happens to an event when a plugin fails (trap, deadline, memory cap, bad answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the event (fail closed).
    #[default]
    Reject,
    /// Carry on as if the plugin had allowed it (fail open).
    Allow,
}

/// `[plugins]`: WebAssembly plugins, their limits and where they run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Whether plugins load at all.
    pub enabled: bool,
    /// Where plugin modules are loaded from and watched. `HOOKWIRE_PLUGINS_DIR`.
    pub dir: String,
    /// Compiled modules, by sha256 (empty: `<dir>/.cache`).
    pub cache_dir: String,
    /// Reload when a `.wasm` file in `dir` changes.
    pub watch: bool,
    /// Append-only JSONL audit trail of plugin decisions (empty: the `audit` log target only).
    pub audit_file: String,
    /// Deadline of one hook call, in milliseconds of CPU time (checked every 1 ms
    /// epoch tick; preempted time does not count; 10× this in wall time stops a call
    /// regardless).
    pub timeout_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    pub memory_mib: u32,
    /// Largest answer of one hook call (new data, meta, channels, emitted publications), in bytes.
    pub max_output_bytes: usize,
    /// `reject` (fail closed) or `allow` (fail open).
    pub on_error: OnError,
    /// Warm instances kept per plugin (0: one per CPU).
    pub instances: usize,
    /// Instances that may exist at once over every plugin (the pooling allocator's slots).
    pub max_instances: u32,
    /// WebAssembly stack of one call, in KiB.
    pub max_stack_kib: usize,
    /// Plugins whose `connect` and `disconnect` hooks run, in order.
    pub connection: Vec<String>,
    /// The plugins, by name (each binds to namespaces through `namespaces.NAME.plugins`).
    pub modules: BTreeMap<String, PluginModuleConfig>,
}

/// `[plugins.modules.NAME]`: one plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginModuleConfig {
    /// The module, relative to `plugins.dir` (empty: `NAME.wasm`, which must hold the
    /// plugin called NAME; another file may run a plugin under a name of its own).
    pub file: String,
    /// Hooks to call: any of `connect`, `subscribe`, `publish`, `disconnect` (empty:
    /// every hook the plugin implements).
    pub hooks: Vec<String>,
    /// Overrides `plugins.on_error`.
    pub on_error: Option<OnError>,
    /// Overrides `plugins.timeout_ms` (0: inherit).
    pub timeout_ms: u64,
    /// Overrides `plugins.memory_mib` (0: inherit).
    pub memory_mib: u32,
    /// The plugin's own configuration, given to its `init` as JSON.
    pub config: toml::Table,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "plugins/dist".into(),
            cache_dir: String::new(),
            watch: true,
            audit_file: String::new(),
            timeout_ms: 10,
            memory_mib: 32,
            max_output_bytes: 65_536,
            on_error: OnError::Reject,
            instances: 0,
            max_instances: 256,
            max_stack_kib: 512,
            connection: Vec::new(),
            modules: BTreeMap::new(),
        }
    }
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
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
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
    pub fn load(
        path: &Path,
        path_is_default: bool,
        env: &EnvOverrides,
    ) -> Result<LoadedConfig, Error> {
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
        let mut p = Problems::default();
        if !self.node_name.is_empty() && !self.node_name.bytes().all(crate::channel::is_name_byte) {
            p.push(format!(
                "node_name = {:?}: use only A-Z a-z 0-9 _ . : @ / = -",
                self.node_name
            ));
        }
        self.auth.validate(&mut p);
        self.limits.validate(&mut p);
        self.rate_limits.validate(&mut p);
        self.connections.validate(&mut p);
        self.api.validate(&mut p);
        self.history.validate(&mut p);
        self.shutdown.validate(&mut p);
        self.log.validate(&mut p);
        self.validate_plugins(&mut p);
        self.validate_default_namespace(&mut p);
        for (name, ns) in &self.namespaces {
            ns.validate(name, &mut p);
        }
        p.into_result()
    }

    fn validate_default_namespace(&self, p: &mut Problems) {
        if self.default_namespace.is_empty() {
            return;
        }
        match self.namespaces.get(&self.default_namespace) {
            None => p.push(format!(
                "default_namespace = {:?}: must name a namespace in [namespaces] ({}), or be empty",
                self.default_namespace,
                self.namespaces
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(ns) if ns.personal => p.push(format!(
                "default_namespace = {:?}: a personal namespace cannot serve names without ':'",
                self.default_namespace
            )),
            Some(_) => {}
        }
    }

    fn validate_plugins(&self, errs: &mut Problems) {
        let p = &self.plugins;
        errs.range("plugins.timeout_ms", p.timeout_ms, 1, 10_000);
        errs.range("plugins.memory_mib", u64::from(p.memory_mib), 1, 4_096);
        errs.range(
            "plugins.max_output_bytes",
            p.max_output_bytes as u64,
            64,
            64 << 20,
        );
        errs.range(
            "plugins.max_instances",
            u64::from(p.max_instances),
            8,
            100_000,
        );
        errs.range("plugins.max_stack_kib", p.max_stack_kib as u64, 64, 65_536);
        for (name, m) in &p.modules {
            let key = format!("plugins.modules.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                errs.push(format!("{key}: a plugin name is 1 or more of a-z 0-9 -"));
            }
            for h in &m.hooks {
                if crate::plugins::Hook::parse(h).is_none() {
                    errs.push(format!(
                        "{key}.hooks has {h:?}: use connect, subscribe, publish or disconnect"
                    ));
                }
            }
            if m.timeout_ms > 0 {
                errs.range(&format!("{key}.timeout_ms"), m.timeout_ms, 1, 10_000);
            }
            if m.memory_mib > 0 {
                errs.range(
                    &format!("{key}.memory_mib"),
                    u64::from(m.memory_mib),
                    1,
                    4_096,
                );
            }
            if m.file.contains("..") {
                errs.push(format!(
                    "{key}.file = {:?}: must stay inside plugins.dir",
                    m.file
                ));
            }
        }
        let bound = p
            .connection
            .iter()
            .map(|n| ("plugins.connection".to_string(), n))
            .chain(self.namespaces.iter().flat_map(|(ns, c)| {
                c.plugins
                    .iter()
                    .map(move |n| (format!("namespaces.{ns}.plugins"), n))
            }));
        for (key, name) in bound {
            if !p.modules.contains_key(name) {
                errs.push(format!(
                    "{key} names plugin {name:?}, which has no [plugins.modules.{name}] section"
                ));
            }
        }
    }
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
        let mut c = Config::default();
        c.limits.max_frame_bytes = 3;
        c.auth.algorithms = vec![TokenAlgorithm::HS256, TokenAlgorithm::RS256];
        c.namespaces.get_mut("chat").unwrap().history_ttl_secs = 0;
        c.rate_limits.user_publishes_per_sec = crate::rate::Rate::new(10);
        c.rate_limits.user_publishes_burst = 5;
        let errs = c.validate().unwrap_err();
        let all = errs.join("\n");
        assert!(
            all.contains("limits.max_frame_bytes = 3: must be 256 to 16777216"),
            "{all}"
        );
        assert!(all.contains("RS256"), "{all}");
        assert!(
            all.contains("namespaces.chat.history_ttl_secs = 0"),
            "{all}"
        );
        assert!(
            all.contains("rate_limits.user_publishes_burst = 5: must be at least"),
            "{all}"
        );
        assert_eq!(errs.len(), 4, "{all}");
    }

    #[test]
    fn typed_fields_refuse_bad_text_with_the_key_and_what_is_allowed() {
        let err = toml::from_str::<Config>("ws_addr = \"localhost\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ws_addr"), "{text}");
        assert!(text.contains("127.0.0.1:8080"), "{text}");
        let err = toml::from_str::<Config>("[auth]\nalgorithms = [\"none\"]").unwrap_err();
        assert!(err.to_string().contains("never accepted"), "{err}");
    }
}
