//! Reloading a node's plugins: the one entry point every reload goes through
//! ([`Plugins::reload_and_log`]: the directory watcher, SIGHUP, `POST
//! /admin/plugins/reload`), and promoting or rolling back a module's new version
//! (`POST /admin/plugins/{name}/promote` and `/rollback`), which change the settings in
//! force and reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::engine::PluginEngine;
use super::load;
use super::runtime::Plugins;
use super::set::PluginSet;
use super::settings::{ModuleSettings, PluginsSettings, RolloutSettings};
use super::types::ReloadReport;
use crate::config::Config;

/// What asked for a reload (the `trigger` field of the reload log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// A `.wasm` file in the plugins directory changed.
    Watcher,
    /// SIGHUP (also re-reads the plugin settings from the config file).
    Signal,
    /// `POST /admin/plugins/reload`.
    Admin,
}

impl ReloadTrigger {
    pub fn label(self) -> &'static str {
        match self {
            Self::Watcher => "watcher",
            Self::Signal => "signal",
            Self::Admin => "admin",
        }
    }
}

impl ReloadReport {
    /// One line per failed and per changed plugin, then the summary.
    fn log(&self, trigger: ReloadTrigger, set: &PluginSet) {
        let trigger = trigger.label();
        for f in &self.failed {
            tracing::error!(
                trigger, plugin = %f.name, file = %f.file, error = %f.error,
                "Plugin reload failed; the previous version keeps running"
            );
        }
        for hint in &self.ignored {
            tracing::warn!(trigger, file = %hint, "A plugin file in plugins.dir is not loaded");
        }
        for p in self.changed.iter().filter_map(|name| set.plugins.get(name)) {
            tracing::info!(
                trigger, plugin = %p.id.name, version = p.id.version.as_str(), sha256 = %p.id.sha256,
                "Plugin reloaded"
            );
        }
        tracing::info!(
            trigger,
            generation = self.generation,
            changed = ?self.changed,
            failed = self.failed.len(),
            load_ms = self.took_ms,
            "Plugin reload done"
        );
    }
}

impl Plugins {
    /// The one way to reload (the directory watcher, SIGHUP and `POST
    /// /admin/plugins/reload` all come here): reloads from disk (and, when given, with
    /// the plugin settings of a newly read config) and logs what happened, tagged with
    /// the `trigger`. Blocking: compiles; run it off the async workers. A plugin that
    /// fails keeps its running version. With plugins off it does nothing.
    pub fn reload_and_log(&self, config: Option<&Config>, trigger: ReloadTrigger) -> ReloadReport {
        let Some(engine) = &self.engine else {
            return ReloadReport::default();
        };
        let _one = self.reloading.lock();
        let (set, report) = self.reload(engine, config);
        report.log(trigger, &set);
        report
    }

    /// Builds and stores the new set; the caller holds `reloading`.
    fn reload(
        &self,
        engine: &PluginEngine,
        config: Option<&Config>,
    ) -> (Arc<PluginSet>, ReloadReport) {
        let settings = {
            let mut current = self.settings.lock();
            if let Some(new) = config.and_then(PluginsSettings::from_config) {
                let fixed = |s: &PluginsSettings| {
                    (s.engine.clone(), s.audit_file.clone(), s.threads, s.queue)
                };
                if current.as_ref().map(fixed) != Some(fixed(&new)) {
                    tracing::warn!(
                        "Plugin engine settings (instances, memory, stack, cache, audit file, threads, queue) need a restart; the rest is reloaded"
                    );
                }
                *current = Some(new);
            }
            current.clone().expect("an engine implies settings")
        };
        let started = Instant::now();
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
        engine.prune_cache(&set.sha256s());
        let set = Arc::new(set);
        self.current.store(set.clone());
        report.took_ms = started.elapsed().as_secs_f64() * 1e3;
        (set, report)
    }

    /// `POST /admin/plugins/{name}/promote`: the module's canary (or, without one, its
    /// shadow) becomes its live version, then a reload. The config file is not
    /// written: the answer and the log say what to change in it (a SIGHUP re-reads it).
    pub fn promote(&self, name: &str) -> Result<(ReloadReport, String), RolloutError> {
        self.change_rollout(name, |modules, rollouts| {
            let rollout = rollouts.get_mut(name).ok_or(RolloutError::Nothing)?;
            let (version, what) = match rollout.canary.take() {
                Some((canary, _)) => (canary, "canary"),
                None => (rollout.shadow.take().ok_or(RolloutError::Nothing)?, "shadow"),
            };
            // Promoting the canary keeps a shadow running beside the new live version.
            if rollout.shadow.is_none() {
                rollouts.remove(name);
            }
            let edit = format!(
                "promoted the {what} {}: to keep it, set plugins.modules.{name}.file to it (and sha256, config as the {what}'s) and remove the {what} from the config",
                version.file.display()
            );
            modules.insert(name.to_string(), version);
            Ok(edit)
        })
    }

    /// `POST /admin/plugins/{name}/rollback`: drops the module's canary and shadow; the
    /// live version handles every event again.
    pub fn rollback(&self, name: &str) -> Result<(ReloadReport, String), RolloutError> {
        self.change_rollout(name, |_, rollouts| {
            rollouts.remove(name).ok_or(RolloutError::Nothing)?;
            Ok(format!(
                "rolled back: to keep it, remove canary and shadow from plugins.modules.{name} in the config"
            ))
        })
    }

    /// Changes the module settings in force (`change` answers what the operator should
    /// write into the config), then reloads, logged as an admin reload.
    fn change_rollout(
        &self,
        name: &str,
        change: impl FnOnce(
            &mut BTreeMap<String, ModuleSettings>,
            &mut BTreeMap<String, RolloutSettings>,
        ) -> Result<String, RolloutError>,
    ) -> Result<(ReloadReport, String), RolloutError> {
        let engine = self.engine.as_ref().ok_or(RolloutError::Off)?;
        let _one = self.reloading.lock();
        let edit = {
            let mut settings = self.settings.lock();
            let settings = settings.as_mut().ok_or(RolloutError::Off)?;
            if !settings.modules.contains_key(name) {
                return Err(RolloutError::Unknown);
            }
            change(&mut settings.modules, &mut settings.rollouts)?
        };
        tracing::warn!(plugin = name, "{edit}");
        let (set, report) = self.reload(engine, None);
        report.log(ReloadTrigger::Admin, &set);
        Ok((report, edit))
    }
}

/// Why a promote or rollback was not done.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("no plugins are configured")]
    Off,
    #[error("no such plugin")]
    Unknown,
    #[error(
        "the plugin has no canary or shadow (configure one under plugins.modules.NAME and reload)"
    )]
    Nothing,
}
