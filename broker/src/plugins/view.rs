//! The `/admin/plugins` view: plain snapshot structs that the admin handler only wraps.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::config::{CanaryBy, OnError};
use super::rollout::DiffView;
use super::runtime::Plugins;
use super::set::LoadedPlugin;
use super::types::Failure;

impl Plugins {
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
                hooks: p.hooks.names(),
                contract: p.contract,
                namespaces: set.namespaces_of(&p.settings.name),
                connection_hooks: set.connection.iter().any(|c| Arc::ptr_eq(c, p)),
                on_error: p.settings.on_error,
                timeout_ms: p.settings.limits.timeout_ms,
                memory_mib: p.settings.limits.memory_bytes >> 20,
                loaded_at: p.loaded_at_ms,
                calls: p.stats.calls.load(Relaxed),
                errors: p.stats.errors.load(Relaxed),
                timeouts: p.stats.timeouts.load(Relaxed),
                retired: p.pool.retired(),
                inline: p.inline.load(std::sync::atomic::Ordering::Relaxed),
                p99_us: p.stats.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                p50_us: p.stats.quantile(0.5).map(|d| d.as_secs_f64() * 1e6),
                canary: set
                    .rollouts
                    .get(&p.settings.name)
                    .and_then(|r| r.canary.as_ref())
                    .map(|c| CanaryView {
                        percent: c.split.percent,
                        by: c.split.by,
                        version: VersionView::of(&c.plugin),
                    }),
                shadow: set
                    .rollouts
                    .get(&p.settings.name)
                    .and_then(|r| r.shadow.as_ref())
                    .map(|s| ShadowView {
                        version: VersionView::of(&s.plugin),
                        comparison: s.diff.view(),
                    }),
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

/// `GET /admin/plugins`: the loaded set and the failed loads.
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

/// One loaded plugin: identity, bindings, limits and call statistics.
#[derive(Debug, Serialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub file: String,
    pub size: u64,
    pub hooks: Vec<&'static str>,
    /// The contract version the module was built against (`0.2.0`, `0.1.0`).
    pub contract: &'static str,
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
    /// Instances retired between calls for their memory (half the headroom they had
    /// after `init` used: a leaking guest), replaced by fresh ones.
    pub retired: u64,
    /// Whether its publish calls may still run on the connections' threads
    /// (`plugins.inline_max_cpu_ms`); false for good after one slow call.
    pub inline: bool,
    /// Hook time quantiles in microseconds (upper bounds within 25%); null before any call.
    pub p99_us: Option<f64>,
    pub p50_us: Option<f64>,
    /// A new version taking a share of the events.
    pub canary: Option<CanaryView>,
    /// A new version run beside this one, compared and never applied.
    pub shadow: Option<ShadowView>,
}

/// A canary and its share.
#[derive(Debug, Serialize)]
pub struct CanaryView {
    pub percent: u8,
    pub by: CanaryBy,
    #[serde(flatten)]
    pub version: VersionView,
}

/// A shadow and how its decisions compare with the live version's.
#[derive(Debug, Serialize)]
pub struct ShadowView {
    #[serde(flatten)]
    pub version: VersionView,
    pub comparison: DiffView,
}

/// One loaded version beside the live one.
#[derive(Debug, Serialize)]
pub struct VersionView {
    pub version: String,
    pub sha256: String,
    pub file: String,
    pub hooks: Vec<&'static str>,
    /// The contract version the module was built against (`0.2.0`, `0.1.0`).
    pub contract: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub p99_us: Option<f64>,
}

impl VersionView {
    fn of(p: &LoadedPlugin) -> Self {
        Self {
            version: p.id.version.clone(),
            sha256: p.id.sha256.clone(),
            file: p.settings.file.display().to_string(),
            hooks: p.hooks.names(),
            contract: p.contract,
            calls: p.stats.calls.load(Relaxed),
            errors: p.stats.errors.load(Relaxed),
            p99_us: p.stats.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
        }
    }
}
