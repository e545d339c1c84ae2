//! The plugin settings resolved from the config: each module's file, hooks, limits and
//! policy, and where the plugins run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{CanaryBy, OnError, PluginModuleConfig, PluginsConfig};
use super::engine::EngineSettings;
use super::state::StateLimits;
use super::types::{Hook, PluginLimits};
use crate::config::Config;

/// One plugin's settings, resolved from `[plugins]` and `[plugins.modules.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSettings {
    pub name: String,
    pub file: PathBuf,
    /// Hooks bound by the config (`None`: every hook the plugin implements).
    pub hooks: Option<Vec<Hook>>,
    pub limits: PluginLimits,
    pub on_error: OnError,
    /// JSON text for `init`.
    pub config: String,
    /// Idle instances kept.
    pub instances: usize,
    /// The SHA-256 the file must have (lower-case hex), when pinned.
    pub sha256: Option<String>,
    /// Bounds of the plugin's shared `state`.
    pub state: StateLimits,
    /// A call over this CPU time (ms) moves the plugin off the connections' threads (0:
    /// never on them); `plugins.inline_max_cpu_ms`.
    pub inline_max_cpu_ms: u64,
}

impl ModuleSettings {
    /// `[plugins.modules.NAME]` (`m`) over the `[plugins]` defaults (`p`); `instances`
    /// is `plugins.instances` resolved.
    fn resolve(
        name: &str,
        m: &PluginModuleConfig,
        p: &PluginsConfig,
        dir: &Path,
        instances: usize,
    ) -> Self {
        let file = if m.file.is_empty() {
            format!("{name}.wasm")
        } else {
            m.file.clone()
        };
        let pick = |own: u64, default: u64| if own == 0 { default } else { own };
        Self {
            name: name.to_string(),
            file: dir.join(file),
            hooks: (!m.hooks.is_empty()).then(|| m.hooks.clone()),
            limits: PluginLimits {
                timeout_ms: pick(m.timeout_ms, p.timeout_ms),
                memory_bytes: (pick(u64::from(m.memory_mib), u64::from(p.memory_mib)) as usize)
                    << 20,
                max_output_bytes: p.max_output_bytes,
            },
            on_error: m.on_error.unwrap_or(p.on_error),
            config: serde_json::to_string(&m.config).expect("TOML values serialize to JSON"),
            instances,
            sha256: (!m.sha256.is_empty()).then(|| m.sha256.to_ascii_lowercase()),
            state: StateLimits {
                max_keys: pick(m.state_max_keys as u64, p.state_max_keys as u64) as usize,
                max_bytes: pick(m.state_max_bytes as u64, p.state_max_bytes as u64) as usize,
            },
            inline_max_cpu_ms: p.inline_max_cpu_ms,
        }
    }
}

impl ModuleSettings {
    /// Another version of this module: its own file, pin and (when given) `init`
    /// configuration; the rest as the module's.
    fn version(&self, dir: &Path, file: &str, sha256: &str, config: Option<&toml::Table>) -> Self {
        Self {
            file: dir.join(file),
            sha256: (!sha256.is_empty()).then(|| sha256.to_ascii_lowercase()),
            config: config.map_or_else(
                || self.config.clone(),
                |c| serde_json::to_string(c).expect("TOML values serialize to JSON"),
            ),
            ..self.clone()
        }
    }
}

/// A module's new versions being rolled out: a canary taking a share of the events, a
/// shadow run beside the live version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutSettings {
    pub canary: Option<(ModuleSettings, Split)>,
    pub shadow: Option<ModuleSettings>,
}

/// The canary's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub percent: u8,
    pub by: CanaryBy,
}

impl RolloutSettings {
    fn resolve(module: &ModuleSettings, m: &PluginModuleConfig, dir: &Path) -> Option<Self> {
        let canary = m.canary.as_ref().map(|c| {
            let version = module.version(dir, &c.file, &c.sha256, c.config.as_ref());
            let split = Split {
                percent: c.percent,
                by: c.by,
            };
            (version, split)
        });
        let shadow = m.shadow.as_ref().map(|s| {
            let v = s.version();
            module.version(dir, &v.file, &v.sha256, v.config.as_ref())
        });
        (canary.is_some() || shadow.is_some()).then_some(Self { canary, shadow })
    }
}

/// The plugin part of the config, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsSettings {
    pub dir: PathBuf,
    pub watch: bool,
    pub audit_file: Option<PathBuf>,
    pub engine: EngineSettings,
    /// Plugin threads (`plugins.threads` resolved) and their queue.
    pub threads: usize,
    pub queue: usize,
    pub modules: BTreeMap<String, ModuleSettings>,
    /// Modules with a canary or a shadow, by name.
    pub rollouts: BTreeMap<String, RolloutSettings>,
    /// Plugins whose connect/disconnect hooks run, in order.
    pub connection: Vec<String>,
    /// Namespace → plugins whose subscribe/publish hooks run there, in order.
    pub namespaces: BTreeMap<String, Vec<String>>,
}

impl PluginsSettings {
    /// `None` when plugins are off or none is configured.
    pub fn from_config(config: &Config) -> Option<Self> {
        let p = &config.plugins;
        if !p.enabled || p.modules.is_empty() {
            return None;
        }
        let dir = PathBuf::from(&p.dir);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let instances = match p.instances {
            0 => cpus,
            n => n,
        };
        let modules: BTreeMap<String, ModuleSettings> = p
            .modules
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    ModuleSettings::resolve(name, m, p, &dir, instances),
                )
            })
            .collect();
        let rollouts = p
            .modules
            .iter()
            .filter_map(|(name, m)| {
                RolloutSettings::resolve(&modules[name], m, &dir).map(|r| (name.clone(), r))
            })
            .collect();
        let max_memory_bytes = modules
            .values()
            .map(|m| m.limits.memory_bytes)
            .max()
            .unwrap_or(32 << 20);
        let namespaces = config
            .namespaces
            .iter()
            .filter(|(_, ns)| !ns.plugins.is_empty())
            .map(|(name, ns)| (name.clone(), ns.plugins.clone()))
            .collect();
        Some(Self {
            dir: dir.clone(),
            watch: p.watch,
            audit_file: (!p.audit_file.is_empty()).then(|| PathBuf::from(&p.audit_file)),
            engine: EngineSettings {
                max_instances: p.max_instances,
                max_memory_bytes,
                max_stack_bytes: p.max_stack_kib << 10,
                cache_dir: match p.cache_dir.as_str() {
                    "" => super::cache::default_dir(),
                    "off" => None,
                    path => Some(PathBuf::from(path)),
                },
            },
            threads: match p.threads {
                0 => cpus,
                n => n,
            },
            queue: p.queue,
            modules,
            rollouts,
            connection: p.connection.clone(),
            namespaces,
        })
    }
}
