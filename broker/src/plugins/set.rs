//! The loaded set: one [`LoadedPlugin`] per plugin and the chains built from them. A
//! set never changes; a reload builds a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::host::HookSet;
use super::instance::Pool;
use super::settings::{ModuleSettings, PluginsSettings};
use super::stats::Stats;
use super::types::{Hook, PluginId};

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
    pub(super) pool: Pool,
    pub stats: Stats,
    pub(super) calls: [prometheus::IntCounter; 4],
    pub(super) seconds: [prometheus::Histogram; 4],
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
    pub(super) connection: Vec<Arc<LoadedPlugin>>,
    by_namespace: HashMap<String, Vec<Arc<LoadedPlugin>>>,
}

impl PluginSet {
    pub(super) fn build(
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
