//! Loading a plugin set: read each module, compile it (or take it from the cache),
//! check its imports, instantiate it and call `info` and `init`. A plugin whose file
//! and settings did not change is carried over as it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::Component;

use super::contract::Linked;
use super::engine::{PluginEngine, sha256_hex};
use super::instance::Pool;
use super::rollout::{Canary, Role, Rollout, Shadow};
use super::set::{LoadedPlugin, PluginSet};
use super::settings::{ModuleSettings, PluginsSettings};
use super::stats::Stats;
use super::types::{Error, Failure, Hook, ReloadReport};
use crate::metrics::Metrics;
use crate::protocol::now_ms;

/// Builds the set `settings` describe. With a `previous` set, a plugin that fails keeps
/// its previous version; without one (start-up) it is left out and reported.
pub fn load_set(
    engine: &PluginEngine,
    settings: &PluginsSettings,
    previous: Option<&PluginSet>,
    metrics: &Metrics,
    generation: u64,
) -> (PluginSet, ReloadReport) {
    let mut report = ReloadReport {
        generation,
        ..ReloadReport::default()
    };
    let mut plugins = BTreeMap::new();
    for (name, module) in &settings.modules {
        let old = previous.and_then(|p| p.plugins.get(name));
        let version = Version {
            label: name.clone(),
            role: Role::Live,
        };
        if let Some(p) = load_version(engine, module, old, metrics, version, &mut report) {
            plugins.insert(name.clone(), p);
        }
    }
    let mut rollouts = BTreeMap::new();
    for (name, r) in &settings.rollouts {
        let old = previous.and_then(|p| p.rollouts.get(name));
        let mut rollout = Rollout::default();
        if let Some((module, split)) = &r.canary {
            let old = old.and_then(|o| o.canary.as_ref()).map(|c| &c.plugin);
            let version = Version {
                label: format!("{name} (canary)"),
                role: Role::Canary,
            };
            if let Some(plugin) = load_version(engine, module, old, metrics, version, &mut report) {
                let split = *split;
                rollout.canary = Some(Canary { plugin, split });
            }
        }
        if let Some(module) = &r.shadow {
            let old = old.and_then(|o| o.shadow.as_ref());
            let version = Version {
                label: format!("{name} (shadow)"),
                role: Role::Shadow,
            };
            let old_plugin = old.map(|s| &s.plugin);
            if let Some(plugin) =
                load_version(engine, module, old_plugin, metrics, version, &mut report)
            {
                // The comparison so far belongs to this shadow version.
                let diff = old
                    .filter(|s| Arc::ptr_eq(&s.plugin, &plugin))
                    .map_or_else(Default::default, |s| s.diff.clone());
                rollout.shadow = Some(Shadow { plugin, diff });
            }
        }
        rollouts.insert(name.clone(), rollout);
    }
    report.ignored = ignored_files(settings);
    (
        PluginSet::build(generation, plugins, rollouts, settings),
        report,
    )
}

/// Which version of a module is loaded: its name in reports, and its role.
struct Version {
    label: String,
    role: Role,
}

/// Loads one version and reports how it went; a failure keeps `old` (when there is one).
fn load_version(
    engine: &PluginEngine,
    module: &ModuleSettings,
    old: Option<&Arc<LoadedPlugin>>,
    metrics: &Metrics,
    version: Version,
    report: &mut ReloadReport,
) -> Option<Arc<LoadedPlugin>> {
    match load_one(engine, module, old, metrics, version.role) {
        Ok(Outcome::Unchanged(p)) => {
            report.unchanged.push(version.label);
            Some(p)
        }
        Ok(Outcome::Loaded(p)) => {
            metrics.plugin_load("ok");
            report.changed.push(version.label);
            Some(p)
        }
        Err(e) => {
            metrics.plugin_load("failed");
            report.failed.push(Failure {
                name: version.label,
                file: module.file.display().to_string(),
                error: e.to_string(),
                at_ms: now_ms(),
            });
            old.cloned()
        }
    }
}

/// The `.wasm` files in `plugins.dir` that no module loads, each with what to do: a
/// file nothing names is otherwise ignored without a word (Cargo writes `rate_words.wasm`
/// for the module `rate-words`).
fn ignored_files(settings: &PluginsSettings) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&settings.dir) else {
        return Vec::new();
    };
    let used: Vec<&std::path::Path> = settings
        .modules
        .values()
        .map(|m| m.file.as_path())
        .collect();
    let mut ignored: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && !used.contains(&p.as_path()))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|file| {
            let stem = file.trim_end_matches(".wasm");
            let dashed = stem.replace('_', "-");
            match settings.modules.contains_key(&dashed) && dashed != stem {
                true => format!(
                    "{file}: no module loads it; module {dashed:?} looks for {dashed}.wasm (Cargo writes underscores): rename the file or set file = {file:?}"
                ),
                false => format!(
                    "{file}: no module loads it; add [plugins.modules.{dashed}] to the config to load it"
                ),
            }
        })
        .collect();
    ignored.sort();
    ignored
}

enum Outcome {
    Unchanged(Arc<LoadedPlugin>),
    Loaded(Arc<LoadedPlugin>),
}

fn load_one(
    engine: &PluginEngine,
    module: &ModuleSettings,
    old: Option<&Arc<LoadedPlugin>>,
    metrics: &Metrics,
    role: Role,
) -> Result<Outcome, Error> {
    let bytes = std::fs::read(&module.file).map_err(|e| Error::Read {
        path: module.file.display().to_string(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file (build the plugins first: plugins/build)".into()
        } else {
            e.to_string()
        },
    })?;
    let sha256 = sha256_hex(&bytes);
    if let Some(pinned) = &module.sha256
        && *pinned != sha256
    {
        return Err(Error::Pinned {
            actual: sha256,
            pinned: pinned.clone(),
        });
    }
    if let Some(old) = old
        && old.id.sha256 == sha256
        && old.settings == *module
    {
        return Ok(Outcome::Unchanged(old.clone()));
    }
    let loaded = prepare(engine, &bytes, sha256, module, metrics, role)?;
    Ok(Outcome::Loaded(Arc::new(loaded)))
}

/// Compiles a module and checks it against the import policy and the world's exports.
pub fn link(engine: &PluginEngine, bytes: &[u8], sha256: &str) -> Result<Linked, Error> {
    link_compiled(engine, &engine.compile(bytes, sha256)?)
}

/// Links an already compiled component (see [`link`]).
pub fn link_compiled(engine: &PluginEngine, component: &Component) -> Result<Linked, Error> {
    let linker = engine.link(component)?;
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| Error::Exports(format!("{e:#}")))?;
    Linked::new(instance_pre)
}

/// Compiles, links and starts one module version.
pub fn prepare(
    engine: &PluginEngine,
    bytes: &[u8],
    sha256: String,
    module: &ModuleSettings,
    metrics: &Metrics,
    role: Role,
) -> Result<LoadedPlugin, Error> {
    let pre = link(engine, bytes, &sha256)?;
    let (pool, info) = Pool::start(
        pre,
        engine.shared(&module.name, module.state),
        &module.name,
        sha256,
        module.limits.clone(),
        module.config.clone(),
        module.instances,
    )?;
    // `NAME.wasm` must hold plugin NAME; a module that names its file explicitly may
    // run a plugin under a name of its own (the same plugin twice, configured apart).
    let default_file = module
        .file
        .file_name()
        .is_some_and(|f| *f == *format!("{}.wasm", module.name));
    if info.name != module.name && default_file {
        return Err(Error::Name {
            declared: info.name,
            configured: module.name.clone(),
        });
    }
    let hooks = match &module.hooks {
        None => info.hooks,
        Some(bound) => {
            let missing: Vec<&str> = bound
                .iter()
                .filter(|h| !info.hooks.contains(**h))
                .map(|h| h.label())
                .collect();
            if !missing.is_empty() {
                return Err(Error::Hooks(missing.join(", ")));
            }
            bound.iter().copied().collect()
        }
    };
    let id = pool.id().clone();
    let labels = |h: Hook| {
        [
            id.name.as_str(),
            id.version.as_str(),
            role.label(),
            h.label(),
        ]
    };
    let calls = Hook::ALL.map(|h| metrics.plugin_calls(labels(h)));
    let seconds = Hook::ALL.map(|h| metrics.plugin_seconds(labels(h)));
    tracing::debug!(plugin = %id.name, hooks = ?hooks.names(), contract = info.contract, "Plugin prepared");
    Ok(LoadedPlugin {
        id,
        settings: module.clone(),
        size: bytes.len() as u64,
        implements: info.hooks,
        contract: info.contract,
        inline: (module.inline_max_cpu_ms > 0).into(),
        hooks,
        loaded_at_ms: now_ms(),
        role,
        pool,
        stats: Stats::default(),
        calls,
        seconds,
    })
}
