//! WebAssembly plugins: the host of the `wit/` contract.
//!
//! ```text
//! plugins            settings, the loaded set (ArcSwap), reload, the admin view
//!   engine           one wasmtime Engine + epoch ticker; compile (disk cache); import policy
//!   host             bindgen! over wit/; store data; host functions; memory limiter
//!   instance         warm instances of one version; one guarded call; failure classes
//!   chain            running the connect/subscribe/publish/disconnect chains
//!   load             reading, compiling, instantiating and initialising a set
//!   audit            the audit trail (tracing target `audit` + JSONL file)
//!   stats            per-plugin counts and hook-time quantiles
//!   watch            the plugins directory watcher
//!   replay           `hookwire plugin inspect` / `hookwire plugin test`
//! ```
//!
//! Every event takes one snapshot of the loaded set, so it is handled by exactly one
//! version of each plugin; a reload builds a whole new set off the hot path and swaps it
//! in atomically. A namespace with no plugins pays one map lookup.

mod audit;
mod chain;
mod deadline;
pub mod engine;
pub mod host;
mod instance;
mod load;
pub mod replay;
mod stats;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

pub use chain::{Emit, Refusal};
pub use host::{PluginConn, PublicationState, PublishSource};
pub use watch::spawn as watch;

use crate::config::{Config, OnError};
use crate::metrics::Metrics;
use engine::{EngineSettings, PluginEngine};
use host::HookSet;
use instance::Pool;
use stats::Stats;

/// What can go wrong loading or calling a plugin. Call failures (`Trap` … `BadOutput`)
/// replace the instance and follow the plugin's `on_error` policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("not a WebAssembly component this broker can compile: {0}")]
    Compile(String),
    #[error(
        "imports {import}, which the broker does not provide ({why}); remove that dependency from the plugin"
    )]
    Import { import: String, why: &'static str },
    #[error("does not fit the hookwire:plugin@0.1.0 `plugin` world: {0}")]
    Exports(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error(
        "calls itself {declared:?}, but the config loads it as {configured:?}; name the module {declared:?}, or set its `file` to run it under another name"
    )]
    Name {
        declared: String,
        configured: String,
    },
    #[error("the config binds it to hook(s) {0} that it does not implement")]
    Hooks(String),
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("ran past its {ms} ms deadline")]
    Timeout { ms: u64 },
    #[error("went over its memory cap of {mib} MiB")]
    MemoryExceeded { mib: usize },
    #[error("answered {bytes} bytes, over its output cap of {max}")]
    OutputTooLarge { bytes: usize, max: usize },
    #[error("gave an answer the broker cannot use: {0}")]
    BadOutput(String),
}

impl Error {
    /// The `kind` label of `hookwire_plugin_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::MemoryExceeded { .. } => "memory",
            Self::OutputTooLarge { .. } | Self::BadOutput(_) => "output",
            Self::Trap(_) => "trap",
            _ => "load",
        }
    }
}

/// Which version of which plugin: tags every log line, metric and audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginId {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Hard limits of one plugin's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    pub max_output_bytes: usize,
}

/// The four hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect,
    Subscribe,
    Publish,
    Disconnect,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Self::Connect,
        Self::Subscribe,
        Self::Publish,
        Self::Disconnect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Disconnect => "disconnect",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.label() == s)
    }

    fn flag(self) -> HookSet {
        match self {
            Self::Connect => HookSet::CONNECT,
            Self::Subscribe => HookSet::SUBSCRIBE,
            Self::Publish => HookSet::PUBLISH,
            Self::Disconnect => HookSet::DISCONNECT,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn hook_names(set: HookSet) -> Vec<&'static str> {
    Hook::ALL
        .into_iter()
        .filter(|h| set.contains(h.flag()))
        .map(Hook::label)
        .collect()
}

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
}

/// The plugin part of the config, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsSettings {
    pub dir: PathBuf,
    pub watch: bool,
    pub audit_file: Option<PathBuf>,
    pub engine: EngineSettings,
    pub modules: BTreeMap<String, ModuleSettings>,
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
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let modules: BTreeMap<String, ModuleSettings> = p
            .modules
            .iter()
            .map(|(name, m)| {
                let file = if m.file.is_empty() {
                    format!("{name}.wasm")
                } else {
                    m.file.clone()
                };
                let pick = |own: u64, default: u64| if own == 0 { default } else { own };
                let settings = ModuleSettings {
                    name: name.clone(),
                    file: dir.join(file),
                    hooks: (!m.hooks.is_empty())
                        .then(|| m.hooks.iter().filter_map(|h| Hook::parse(h)).collect()),
                    limits: PluginLimits {
                        timeout_ms: pick(m.timeout_ms, p.timeout_ms),
                        memory_bytes: (pick(u64::from(m.memory_mib), u64::from(p.memory_mib))
                            as usize)
                            << 20,
                        max_output_bytes: p.max_output_bytes,
                    },
                    on_error: m.on_error.unwrap_or(p.on_error),
                    config: serde_json::to_string(&m.config)
                        .expect("TOML values serialize to JSON"),
                    instances: if p.instances == 0 {
                        workers
                    } else {
                        p.instances
                    },
                };
                (name.clone(), settings)
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
                cache_dir: Some(if p.cache_dir.is_empty() {
                    dir.join(".cache")
                } else {
                    PathBuf::from(&p.cache_dir)
                }),
            },
            modules,
            connection: p.connection.clone(),
            namespaces,
        })
    }
}

/// One loaded version of one plugin.
pub struct LoadedPlugin {
    pub id: Arc<PluginId>,
    pub settings: ModuleSettings,
    pub size: u64,
    /// The hooks the plugin implements.
    pub implements: HookSet,
    /// The hooks the broker calls: implemented and bound.
    pub hooks: HookSet,
    pub loaded_at_ms: u64,
    pool: Pool,
    pub stats: Stats,
    calls: [prometheus::IntCounter; 4],
    seconds: [prometheus::Histogram; 4],
}

impl LoadedPlugin {
    pub fn has(&self, hook: Hook) -> bool {
        self.hooks.contains(hook.flag())
    }
}

/// The plugins in force, and the chains built from them.
#[derive(Default)]
pub struct PluginSet {
    pub generation: u64,
    /// By configured name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    connection: Vec<Arc<LoadedPlugin>>,
    by_namespace: HashMap<String, Vec<Arc<LoadedPlugin>>>,
}

impl PluginSet {
    fn build(
        generation: u64,
        plugins: BTreeMap<String, Arc<LoadedPlugin>>,
        settings: &PluginsSettings,
    ) -> Self {
        let pick = |names: &[String]| -> Vec<Arc<LoadedPlugin>> {
            names
                .iter()
                .filter_map(|n| plugins.get(n).cloned())
                .collect()
        };
        Self {
            generation,
            connection: pick(&settings.connection),
            by_namespace: settings
                .namespaces
                .iter()
                .map(|(ns, names)| (ns.clone(), pick(names)))
                .collect(),
            plugins,
        }
    }

    /// The sha256 of every loaded module.
    pub fn sha256s(&self) -> Vec<&str> {
        self.plugins
            .values()
            .map(|p| p.id.sha256.as_str())
            .collect()
    }

    /// The publish/subscribe chain of a namespace, in order (empty when none).
    pub fn chain(&self, namespace: &str) -> &[Arc<LoadedPlugin>] {
        self.by_namespace.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The namespaces a plugin is bound to.
    fn namespaces_of(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_namespace
            .iter()
            .filter(|(_, chain)| chain.iter().any(|p| p.settings.name == name))
            .map(|(ns, _)| ns.clone())
            .collect();
        out.sort();
        out
    }
}

/// A failed load, kept for `/admin/plugins` until that plugin loads again.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub name: String,
    pub file: String,
    pub error: String,
    pub at_ms: u64,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub failed: Vec<Failure>,
    /// Time spent reading, compiling, instantiating and initialising, in milliseconds.
    pub took_ms: f64,
}

/// The plugin runtime of a node. With plugins off it holds an empty set and every hook
/// is a no-op.
pub struct Plugins {
    engine: Option<Arc<PluginEngine>>,
    settings: Mutex<Option<PluginsSettings>>,
    current: ArcSwap<PluginSet>,
    failures: Mutex<BTreeMap<String, Failure>>,
    /// One reload at a time.
    reloading: Mutex<()>,
    audit: audit::Audit,
    metrics: Arc<Metrics>,
}

impl Plugins {
    pub fn disabled(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            engine: None,
            settings: Mutex::new(None),
            current: ArcSwap::from_pointee(PluginSet::default()),
            failures: Mutex::default(),
            reloading: Mutex::new(()),
            audit: audit::Audit::tracing_only(),
            metrics,
        })
    }

    /// Loads every configured plugin; any failure stops the start (the error names
    /// the plugin and what to do).
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let Some(settings) = PluginsSettings::from_config(config) else {
            return Ok(Self::disabled(metrics));
        };
        Self::with_settings(settings, metrics)
    }

    /// Loads the plugins of resolved settings (see [`Plugins::start`]).
    pub fn with_settings(
        settings: PluginsSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = PluginEngine::new(&settings.engine)?;
        let audit = match &settings.audit_file {
            Some(path) => audit::Audit::to_file(path).map_err(|e| {
                anyhow::anyhow!("cannot open the audit file {}: {e}", path.display())
            })?,
            None => audit::Audit::tracing_only(),
        };
        let (set, report) = load::load_set(&engine, &settings, None, &metrics, 1);
        engine.prune_cache(&set.sha256s());
        if let Some(f) = report.failed.first() {
            anyhow::bail!(
                "plugin {:?} ({}) failed to load: {}",
                f.name,
                f.file,
                f.error
            );
        }
        for p in set.plugins.values() {
            tracing::info!(
                plugin = %p.id.name, version = %p.id.version, sha256 = %p.id.sha256,
                hooks = ?hook_names(p.hooks), "Plugin loaded"
            );
        }
        Ok(Arc::new(Self {
            engine: Some(engine),
            settings: Mutex::new(Some(settings)),
            current: ArcSwap::from_pointee(set),
            failures: Mutex::default(),
            reloading: Mutex::new(()),
            audit,
            metrics,
        }))
    }

    /// Whether any plugin is loaded (sessions then keep a [`PluginConn`]).
    pub fn active(&self) -> bool {
        self.engine.is_some()
    }

    /// The directory to watch, when watching is on.
    pub fn watched_dir(&self) -> Option<PathBuf> {
        let settings = self.settings.lock();
        settings.as_ref().filter(|s| s.watch).map(|s| s.dir.clone())
    }

    /// Reloads from disk (and, when given, with the plugin settings of a newly read
    /// config). Blocking: compiles; run it off the async workers. A plugin that fails
    /// keeps its running version.
    pub fn reload(&self, config: Option<&Config>) -> ReloadReport {
        let _one = self.reloading.lock();
        let Some(engine) = &self.engine else {
            return ReloadReport::default();
        };
        let settings = {
            let mut current = self.settings.lock();
            if let Some(new) = config.and_then(PluginsSettings::from_config) {
                if current.as_ref().map(|s| (&s.engine, &s.audit_file))
                    != Some((&new.engine, &new.audit_file))
                {
                    tracing::warn!(
                        "Plugin engine settings (instances, memory, stack, cache, audit file) need a restart; the rest is reloaded"
                    );
                }
                *current = Some(new);
            }
            current.clone().expect("an engine implies settings")
        };
        let started = std::time::Instant::now();
        let previous = self.current.load_full();
        let (set, mut report) = load::load_set(
            engine,
            &settings,
            Some(&previous),
            &self.metrics,
            previous.generation + 1,
        );
        {
            let mut failures = self.failures.lock();
            for name in report.changed.iter().chain(&report.unchanged) {
                failures.remove(name);
            }
            for f in &report.failed {
                failures.insert(f.name.clone(), f.clone());
            }
        }
        for f in &report.failed {
            tracing::error!(plugin = %f.name, file = %f.file, error = %f.error, "Plugin reload failed; the previous version keeps running");
        }
        if !report.changed.is_empty() {
            for name in &report.changed {
                if let Some(p) = set.plugins.get(name) {
                    tracing::info!(plugin = %p.id.name, version = %p.id.version, sha256 = %p.id.sha256, "Plugin reloaded");
                }
            }
        }
        engine.prune_cache(&set.sha256s());
        self.current.store(Arc::new(set));
        report.took_ms = started.elapsed().as_secs_f64() * 1e3;
        report
    }

    /// The loaded set now (one snapshot per event; a guard, not a reference count, so
    /// that threads do not contend on the set's counter on every event).
    pub fn set(&self) -> arc_swap::Guard<Arc<PluginSet>> {
        self.current.load()
    }

    /// Whether a namespace has a publish chain (the pipeline skips all plugin work when not).
    pub fn publishes_through(&self, namespace: &str) -> bool {
        self.engine.is_some()
            && self
                .current
                .load()
                .chain(namespace)
                .iter()
                .any(|p| p.has(Hook::Publish))
    }

    /// The `/admin/plugins` view.
    pub fn view(&self) -> PluginsView {
        let set = self.current.load_full();
        let plugins = set
            .plugins
            .values()
            .map(|p| PluginView {
                name: p.id.name.clone(),
                version: p.id.version.clone(),
                sha256: p.id.sha256.clone(),
                file: p.settings.file.display().to_string(),
                size: p.size,
                hooks: hook_names(p.hooks),
                namespaces: set.namespaces_of(&p.settings.name),
                connection_hooks: set.connection.iter().any(|c| Arc::ptr_eq(c, p)),
                on_error: p.settings.on_error,
                timeout_ms: p.settings.limits.timeout_ms,
                memory_mib: p.settings.limits.memory_bytes >> 20,
                loaded_at: p.loaded_at_ms,
                calls: p.stats.calls.load(std::sync::atomic::Ordering::Relaxed),
                errors: p.stats.errors.load(std::sync::atomic::Ordering::Relaxed),
                timeouts: p.stats.timeouts.load(std::sync::atomic::Ordering::Relaxed),
                p99_us: p.stats.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                p50_us: p.stats.quantile(0.5).map(|d| d.as_secs_f64() * 1e6),
            })
            .collect();
        let failures: Vec<Failure> = self.failures.lock().values().cloned().collect();
        PluginsView {
            enabled: self.engine.is_some(),
            generation: set.generation,
            plugins,
            last_failed_load: failures.iter().max_by_key(|f| f.at_ms).cloned(),
            failures,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PluginsView {
    pub enabled: bool,
    /// Increases with every reload.
    pub generation: u64,
    pub plugins: Vec<PluginView>,
    /// The most recent failed load, if any plugin's last load failed.
    pub last_failed_load: Option<Failure>,
    /// Every plugin whose last load failed (it keeps running its previous version).
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub file: String,
    pub size: u64,
    pub hooks: Vec<&'static str>,
    pub namespaces: Vec<String>,
    pub connection_hooks: bool,
    pub on_error: OnError,
    pub timeout_ms: u64,
    pub memory_mib: usize,
    /// Unix milliseconds.
    pub loaded_at: u64,
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Hook time quantiles in microseconds (upper bounds within 25%); null before any call.
    pub p99_us: Option<f64>,
    pub p50_us: Option<f64>,
}
