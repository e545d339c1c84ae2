//! The `/admin/plugins` view: plain snapshot structs that the admin handler only wraps.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::config::OnError;
use super::host::hook_names;
use super::runtime::Plugins;
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
                hooks: hook_names(p.hooks),
                namespaces: set.namespaces_of(&p.settings.name),
                connection_hooks: set.connection.iter().any(|c| Arc::ptr_eq(c, p)),
                on_error: p.settings.on_error,
                timeout_ms: p.settings.limits.timeout_ms,
                memory_mib: p.settings.limits.memory_bytes >> 20,
                loaded_at: p.loaded_at_ms,
                calls: p.stats.calls.load(Relaxed),
                errors: p.stats.errors.load(Relaxed),
                timeouts: p.stats.timeouts.load(Relaxed),
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
