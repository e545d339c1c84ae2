//! Configuration: TOML file + `HOOKWIRE_*` environment overrides, validated up front.
//!
//! Each subsystem owns its section and that section's validation (`[auth]` in
//! `auth::config`, `[limits]`, `[rate_limits]` and `[connections]` in `limits::config`,
//! `[namespaces]` in `channel`, `[history]` in `history`, `[api]` in `admin`, `[log]`
//! in `logging`, `[shutdown]` in `server`, `[quic]` in `transport::wt::config`, `[plugins]` in `plugins::config`); the root [`Config`] only gathers them, so the whole shape reads in one place.
//! Load into plain structs ([`Config::load`]), then [`Config::validate`] collects every
//! problem at once, naming the key, the value and what is allowed. `Config::default()` is
//! what `config/hookwire.toml` spells out, but for the example plugins it loads.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::admin::config::ApiConfig;
pub use crate::auth::{AuthConfig, TokenAlgorithm};
pub use crate::channel::NamespaceConfig;
pub use crate::cluster::config::ClusterConfig;
pub use crate::history::HistoryConfig;
pub use crate::limits::{ConnectionsConfig, LimitsConfig, RateLimitsConfig};
pub use crate::logging::{LogConfig, LogFormat};
pub use crate::plugins::config::{OnError, PluginModuleConfig, PluginsConfig};
pub use crate::server::config::ShutdownConfig;
pub use crate::transport::wt::config::QuicConfig;
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
    /// The WebTransport listener (UDP). `HOOKWIRE_QUIC_ADDR` sets its address.
    pub quic: QuicConfig,
    /// This node's name (`node` in `connected`); empty: host name plus a random suffix.
    pub node_name: String,
    /// Where what must survive a restart is kept (the revocation list); empty: nothing
    /// is kept on disk.
    pub data_dir: String,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rate_limits: RateLimitsConfig,
    pub connections: ConnectionsConfig,
    pub api: ApiConfig,
    pub history: HistoryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub plugins: PluginsConfig,
    /// Joining other nodes through NATS; with no `nats_url`, a single node in memory.
    pub cluster: ClusterConfig,
    /// Which namespace's settings apply to channel names without `:` (empty: such names
    /// answer `not_found`).
    pub default_namespace: String,
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

/// A listener address, with a message that says what is allowed.
pub(crate) fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address: must be an IP address and port such as \"127.0.0.1:8080\" (port 0 picks a free port)"
        ))
    })
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
            "typing".to_string(),
            NamespaceConfig {
                allow_publish: true,
                volatile: true,
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
            quic: QuicConfig::default(),
            node_name: String::new(),
            data_dir: "data".into(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            connections: ConnectionsConfig::default(),
            api: ApiConfig::default(),
            history: HistoryConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            plugins: PluginsConfig::default(),
            cluster: ClusterConfig::default(),
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
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, Some(path), env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path_is_default => {
                Self::from_toml_str("", None, env)
            }
            Err(source) => Err(Error::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// [`Config::load`] of text already read: `path` is where it came from (`None`: the
    /// embedded defaults, with `text` empty), for messages and [`LoadedConfig::path`].
    pub fn from_toml_str(
        text: &str,
        path: Option<&Path>,
        env: &EnvOverrides,
    ) -> Result<LoadedConfig, Error> {
        let used_path = path.map(Path::to_path_buf);
        let parse_err = |message: String| Error::Parse {
            path: used_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<embedded defaults>")),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        // Parse once with every default filled in, and override that whole table: an
        // override changes exactly the key it names (with or without a file), and the
        // namespaces and plugins of the result are known so their keys can be overridden.
        let base: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        let table = toml::Table::try_from(&base).expect("config serializes to TOML");
        let (table, applied_env, unknown_env) = env.apply(table, &base)?;
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        // `plugins.dir` from a file is relative to that file (so the broker finds the
        // plugins whatever directory it starts in); from the environment or the embedded
        // defaults, to the working directory.
        if let Some(file) = path
            && !applied_env.iter().any(|v| v == "HOOKWIRE_PLUGINS_DIR")
            && Path::new(&config.plugins.dir).is_relative()
        {
            let beside = file
                .parent()
                .unwrap_or(Path::new(""))
                .join(&config.plugins.dir);
            config.plugins.dir = beside.to_string_lossy().into_owned();
        }
        config.validate().map_err(Error::Invalid)?;
        Ok(LoadedConfig {
            config,
            path: used_path,
            applied_env,
            unknown_env,
        })
    }

    /// Checks every setting; returns every problem, each naming key, value and what is allowed.
    /// The data directory, `None` when nothing is kept on disk.
    pub fn data_dir(&self) -> Option<&Path> {
        (!self.data_dir.is_empty()).then(|| Path::new(&self.data_dir))
    }

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
        self.quic.validate(&mut p);
        self.log.validate(&mut p);
        let bindings = self
            .namespaces
            .iter()
            .map(|(ns, c)| (ns.as_str(), c.plugins.as_slice()));
        self.plugins.validate(bindings, &mut p);
        self.cluster
            .validate(self.namespaces.keys().map(String::as_str), &mut p);
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
        assert_eq!(shipped.plugins.modules.len(), 6);
        // Its plugins.dir is relative to the file (config/): the same directory.
        assert_eq!(shipped.plugins.dir, "../plugins/dist");
        shipped.plugins.dir = Config::default().plugins.dir;
        shipped.plugins.modules.clear();
        shipped.plugins.connection.clear();
        for ns in shipped.namespaces.values_mut() {
            ns.plugins.clear();
        }
        assert_eq!(shipped, Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn plugins_dir_in_a_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf/hookwire.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "[plugins]\ndir = \"../wasm\"\n").unwrap();
        let none = EnvOverrides::default();
        let c = Config::load(&file, false, &none).unwrap().config;
        assert_eq!(Path::new(&c.plugins.dir), dir.path().join("conf/../wasm"));
        // An override is relative to the working directory, as given.
        let env = EnvOverrides::from_pairs([("HOOKWIRE_PLUGINS_DIR", "here/wasm")]);
        let c = Config::load(&file, false, &env).unwrap().config;
        assert_eq!(c.plugins.dir, "here/wasm");
        // Absolute stays; the embedded defaults are relative to the working directory.
        std::fs::write(&file, "[plugins]\ndir = \"/srv/wasm\"\n").unwrap();
        let c = Config::load(&file, false, &none).unwrap().config;
        assert_eq!(c.plugins.dir, "/srv/wasm");
        let missing = dir.path().join("nothing.toml");
        let c = Config::load(&missing, true, &none).unwrap().config;
        assert_eq!(c.plugins.dir, "plugins/dist");
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
