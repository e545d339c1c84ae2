//! The loaded set: one [`LoadedPlugin`] per plugin and the chains built from them. A
//! set never changes; a reload builds a new one.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::channel::NameMap;

use super::instance::Pool;
use super::rollout::{EventKey, Role, Rollout, Shadow};
use super::settings::{ModuleSettings, PluginsSettings};
use super::stats::Stats;
use super::types::{Hook, HookSet, PluginId};

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
    /// The contract version it was built against (`0.2.0`, `0.1.0`).
    pub contract: &'static str,
    /// Live, or a canary or shadow beside the live version.
    pub role: Role,
    pub(super) pool: Pool,
    pub stats: Stats,
    /// Whether its publish calls may run on the connection's thread (see
    /// `plugins.inline_max_cpu_ms`); cleared for good by one slow call.
    pub(super) inline: std::sync::atomic::AtomicBool,
    pub(super) calls: [prometheus::IntCounter; Hook::ALL.len()],
    pub(super) seconds: [prometheus::Histogram; Hook::ALL.len()],
}

impl LoadedPlugin {
    pub fn has(&self, hook: Hook) -> bool {
        self.hooks.contains(hook)
    }

    /// This version's labels on a per-plugin metric, the last one given.
    pub(super) fn labels<'a>(&'a self, last: &'a str) -> [&'a str; 4] {
        [&self.id.name, &self.id.version, self.role.label(), last]
    }
}

/// The plugins in force, and the chains built from them.
#[derive(Default)]
pub struct PluginSet {
    pub generation: u64,
    /// By configured name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    pub(super) connection: Vec<Arc<LoadedPlugin>>,
    /// Looked up on every publication of a namespace with plugins.
    by_namespace: NameMap<String, Vec<Arc<LoadedPlugin>>>,
    /// Canaries and shadows, by the name of the module they roll out.
    pub rollouts: BTreeMap<String, Rollout>,
}

impl PluginSet {
    pub(super) fn build(
        generation: u64,
        plugins: BTreeMap<String, Arc<LoadedPlugin>>,
        rollouts: BTreeMap<String, Rollout>,
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
            rollouts,
        }
    }

    /// The version of `live` that handles an event: its canary for the canary's share,
    /// otherwise `live` itself.
    pub(super) fn pick<'a>(
        &'a self,
        live: &'a Arc<LoadedPlugin>,
        key: EventKey<'_>,
    ) -> &'a Arc<LoadedPlugin> {
        if self.rollouts.is_empty() {
            return live;
        }
        match self
            .rollouts
            .get(&live.settings.name)
            .and_then(|r| r.canary.as_ref())
        {
            Some(canary) if canary.takes(key) => &canary.plugin,
            _ => live,
        }
    }

    /// The shadow running beside a live plugin, if any.
    pub(super) fn shadow_of(&self, live: &LoadedPlugin) -> Option<&Shadow> {
        if self.rollouts.is_empty() {
            return None;
        }
        self.rollouts
            .get(&live.settings.name)
            .and_then(|r| r.shadow.as_ref())
    }

    /// The sha256 of every loaded module (canaries and shadows too).
    pub fn sha256s(&self) -> Vec<&str> {
        let rollouts = self.rollouts.values().flat_map(|r| {
            let canary = r.canary.as_ref().map(|c| &c.plugin);
            let shadow = r.shadow.as_ref().map(|s| &s.plugin);
            canary.into_iter().chain(shadow)
        });
        self.plugins
            .values()
            .chain(rollouts)
            .map(|p| p.id.sha256.as_str())
            .collect()
    }

    /// The publish/subscribe chain of a namespace, in order (empty when none).
    pub fn chain(&self, namespace: &str) -> &[Arc<LoadedPlugin>] {
        self.by_namespace.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The namespaces a plugin is bound to.
    pub(super) fn namespaces_of(&self, name: &str) -> Vec<String> {
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
