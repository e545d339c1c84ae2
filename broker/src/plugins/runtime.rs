//! The plugin runtime of a node ([`Plugins`]): start-up, the one reload entry point
//! ([`Plugins::reload_and_log`]), and running the hook chains. Each event takes one
//! snapshot of the loaded set and calls its chain in order: each plugin sees the previous
//! one's changes, the first refusal wins, a failing plugin follows its `on_error` policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::answer::{self, Changes, Emit, PublishOutcome, Refusal};
use super::audit::{self, Record};
use super::config::OnError;
use super::engine::PluginEngine;
use super::host::{
    ConnectDecision, Decision, PluginConn, PublicationState, PublishDecision, WitRefusal,
    publication_handle,
};
use super::instance::Warm;
use super::load;
use super::meta::{self, MetaFields};
use super::rollout::{Compared, EventKey};
use super::set::{LoadedPlugin, PluginSet};
use super::settings::PluginsSettings;
use super::shadow::{judge_connect, judge_decision, judge_publish, verdict};
use super::stats::TIMED_EVERY;
use super::threads::{Overloaded, PluginThreads};
use super::types::{Error, Failure, Hook};
use crate::clock::Countdown;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::now_ms;

/// The plugin runtime of a node. With plugins off it holds an empty set and every hook
/// is a no-op.
pub struct Plugins {
    pub(super) engine: Option<Arc<PluginEngine>>,
    pub(super) settings: Mutex<Option<PluginsSettings>>,
    pub(super) current: ArcSwap<PluginSet>,
    pub(super) failures: Mutex<BTreeMap<String, Failure>>,
    /// One reload at a time.
    pub(super) reloading: Mutex<()>,
    audit: audit::Audit,
    pub(super) metrics: Arc<Metrics>,
    /// Where connections' hook calls run (`None` with plugins off).
    threads: Option<PluginThreads>,
    /// Recording real events for `plugin test` (`/admin/plugins/capture`).
    pub capture: super::capture::Capture,
}

impl Plugins {
    pub fn disabled(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            engine: None,
            settings: Mutex::new(None),
            current: ArcSwap::from_pointee(PluginSet::default()),
            failures: Mutex::default(),
            reloading: Mutex::new(()),
            audit: audit::Audit::tracing_only(metrics.plugin_audit_dropped.clone()),
            metrics,
            threads: None,
            capture: Default::default(),
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
        let engine = PluginEngine::new(&settings.engine, Some(metrics.clone()))?;
        let threads = PluginThreads::start(settings.threads, settings.queue)
            .map_err(|e| anyhow::anyhow!("cannot start the plugin threads: {e}"))?;
        let audit = match &settings.audit_file {
            Some(path) => audit::Audit::to_file(path, metrics.plugin_audit_dropped.clone())
                .map_err(|e| {
                    anyhow::anyhow!("cannot open the audit file {}: {e}", path.display())
                })?,
            None => audit::Audit::tracing_only(metrics.plugin_audit_dropped.clone()),
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
                plugin = %p.id.name, version = p.id.version.as_str(), sha256 = %p.id.sha256,
                hooks = ?p.hooks.names(), contract = p.contract, "Plugin loaded"
            );
        }
        for hint in &report.ignored {
            tracing::warn!(file = %hint, "A plugin file in plugins.dir is not loaded");
        }
        Ok(Arc::new(Self {
            engine: Some(engine),
            settings: Mutex::new(Some(settings)),
            current: ArcSwap::from_pointee(set),
            failures: Mutex::default(),
            reloading: Mutex::new(()),
            audit,
            metrics,
            threads: Some(threads),
            capture: Default::default(),
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

    /// The loaded set now (one snapshot per event; a guard, not a reference count, so
    /// that threads do not contend on the set's counter on every event).
    pub fn set(&self) -> arc_swap::Guard<Arc<PluginSet>> {
        self.current.load()
    }

    /// Whether a namespace has a publish chain (the pipeline skips all plugin work when not).
    pub fn publishes_through(&self, namespace: &str) -> bool {
        self.publish_chain(namespace) != PublishChain::None
    }

    /// How a namespace's publish chain runs (one look at the set per publication). On the
    /// caller's thread when no canary or shadow is beside it and every plugin of it has
    /// kept its calls within `plugins.inline_max_cpu_ms`.
    pub fn publish_chain(&self, namespace: &str) -> PublishChain {
        use std::sync::atomic::Ordering::Relaxed;
        if self.engine.is_none() {
            return PublishChain::None;
        }
        let set = self.current.load();
        let mut chain = (set.chain(namespace).iter())
            .filter(|p| p.has(Hook::Publish))
            .peekable();
        if chain.peek().is_none() {
            return PublishChain::None;
        }
        let inline = |p: &Arc<LoadedPlugin>| {
            p.inline.load(Relaxed) && !set.rollouts.contains_key(&p.settings.name)
        };
        if chain.all(inline) {
            PublishChain::Inline
        } else {
            PublishChain::Threads
        }
    }

    /// Whether a namespace has a subscribe chain (a subscribe skips the plugin threads
    /// when not).
    pub fn subscribes_through(&self, namespace: &str) -> bool {
        self.chain_has(namespace, Hook::Subscribe)
    }

    /// Whether a namespace's chain has a plugin with this hook.
    pub fn chain_has(&self, namespace: &str, hook: Hook) -> bool {
        self.engine.is_some()
            && self
                .current
                .load()
                .chain(namespace)
                .iter()
                .any(|p| p.has(hook))
    }

    /// Whether a connection plugin has this hook (`Connect` or `Disconnect`).
    pub fn connection_has(&self, hook: Hook) -> bool {
        self.engine.is_some() && self.current.load().connection.iter().any(|p| p.has(hook))
    }

    /// Runs `f` (hook calls) on a plugin thread and awaits its answer, so that a slow
    /// plugin never holds an async worker (and with it other connections' I/O). A full
    /// queue answers `Err(Overloaded)` at once, counted under `hook`. With plugins off,
    /// `f` runs here.
    pub async fn offload<R: Send + 'static>(
        self: &Arc<Self>,
        hook: Hook,
        f: impl FnOnce(&Plugins) -> R + Send + 'static,
    ) -> Result<R, Overloaded> {
        let Some(threads) = &self.threads else {
            return Ok(f(self));
        };
        let plugins = self.clone();
        let result = threads.run(move || f(&plugins)).await;
        if result.is_err() {
            self.metrics.plugin_overloaded(hook.label());
        }
        result
    }
}

/// Where a namespace's publish chain runs ([`Plugins::publish_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishChain {
    /// The namespace has no publish chain.
    None,
    /// On the publisher's thread.
    Inline,
    /// On the plugin threads.
    Threads,
}

/// Who an event is about, for the audit trail.
pub(super) struct Subject<'a> {
    pub channel: Option<&'a str>,
    pub user: Option<&'a str>,
    pub client: Option<&'a str>,
}

impl Plugins {
    /// Runs the connect chain; merges accepted metadata into `conn.meta`.
    pub fn on_connect(&self, conn: &mut PluginConn) -> Result<(), Refusal> {
        let set = self.set();
        let mut meta = MetaFields::new();
        let key = EventKey {
            connection: Some(&conn.client),
            channel: None,
        };
        for live in set.connection.iter().filter(|p| p.has(Hook::Connect)) {
            let p = set.pick(live, key);
            let wit = conn.to_wit();
            let connect = |p: &LoadedPlugin| {
                self.call(p, Hook::Connect, |w| {
                    w.bindings.on_connect(&mut w.store, &wit)
                })
            };
            let event = Compared {
                hook: Hook::Connect,
                channel: None,
                user: Some(&conn.user),
            };
            let answer = self.answer_beside_shadow(
                set.shadow_of(live),
                p,
                &event,
                ConnectDecision::Accept,
                connect,
                judge_connect,
            );
            let subject = Subject {
                channel: None,
                user: Some(&conn.user),
                client: Some(&conn.client),
            };
            match answer {
                Ok(ConnectDecision::Accept) => {}
                Ok(ConnectDecision::AcceptWithMeta(json)) => {
                    let max = p.settings.limits.max_output_bytes;
                    match answer::merge_connect_meta(&mut meta, &json, max) {
                        Ok(()) => conn.meta = meta::object_text(&meta).into(),
                        Err(e) => self.failed(p, Hook::Connect, &subject, e, "connection")?,
                    }
                }
                Ok(ConnectDecision::Refuse(reason)) => {
                    return Err(self.refused(p, Hook::Connect, &subject, &reason, "connection"));
                }
                Err(e) => self.failed(p, Hook::Connect, &subject, e, "connection")?,
            }
        }
        Ok(())
    }

    /// Runs the subscribe chain of `namespace`.
    pub fn on_subscribe(
        &self,
        namespace: &str,
        conn: &PluginConn,
        channel: &str,
    ) -> Result<(), Refusal> {
        let set = self.set();
        let subject = Subject {
            channel: Some(channel),
            user: Some(&conn.user),
            client: Some(&conn.client),
        };
        let key = EventKey {
            connection: Some(&conn.client),
            channel: Some(channel),
        };
        for live in set
            .chain(namespace)
            .iter()
            .filter(|p| p.has(Hook::Subscribe))
        {
            let p = set.pick(live, key);
            let wit = conn.to_wit();
            let subscribe = |p: &LoadedPlugin| {
                self.call(p, Hook::Subscribe, |w| {
                    w.bindings.on_subscribe(&mut w.store, &wit, channel)
                })
            };
            let event = Compared {
                hook: Hook::Subscribe,
                channel: Some(channel),
                user: Some(&conn.user),
            };
            let answer = self.answer_beside_shadow(
                set.shadow_of(live),
                p,
                &event,
                Decision::Allow,
                subscribe,
                judge_decision,
            );
            match answer {
                Ok(Decision::Allow) => {}
                Ok(Decision::Refuse(reason)) => {
                    return Err(self.refused(
                        p,
                        Hook::Subscribe,
                        &subject,
                        &reason,
                        "subscription",
                    ));
                }
                Err(e) => self.failed(p, Hook::Subscribe, &subject, e, "subscription")?,
            }
        }
        Ok(())
    }

    /// Runs the publish chain of `namespace` over `publication`; `valid_channel` says
    /// whether a channel a plugin routes to exists. Returns the extra publications.
    pub fn on_publish(
        &self,
        namespace: &str,
        publication: PublicationState,
        valid_channel: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(PublicationState, Vec<Emit>), Refusal> {
        let set = self.set();
        let mut emits = Vec::new();
        // Moved into the instance's store for each call and back out after it.
        let mut slot = Some(publication);
        let publication = &mut slot;
        let current = publication.as_ref().expect("present between calls");
        let original = current.channels.first().cloned();
        let user = current.user.clone();
        let client = current.connection.as_ref().map(|c| c.client.clone());
        let subject = Subject {
            channel: original.as_deref(),
            user: user.as_deref(),
            client: client.as_deref(),
        };
        let key = EventKey {
            connection: client.as_deref(),
            channel: original.as_deref(),
        };
        for live in set.chain(namespace).iter().filter(|p| p.has(Hook::Publish)) {
            let p = set.pick(live, key);
            if !p.has(Hook::Publish) {
                continue;
            }
            let shadow = set.shadow_of(live).filter(|s| s.plugin.has(Hook::Publish));
            // The shadow's copy of the event, as the live version gets it.
            let copy = shadow.and_then(|_| publication.clone());
            let emitted_before = emits.len();
            let answer = self.call_publish(p, publication);
            let Some(current) = publication.as_mut() else {
                unreachable!("the publication comes back from the store, whatever the call did")
            };
            let max = p.settings.limits.max_output_bytes;
            let outcome = answer.and_then(|answer| {
                answer::apply_publish(answer, &p.id.name, max, current, &mut emits, valid_channel)
            });
            if let (Some(shadow), Some(copy)) = (shadow, copy) {
                let event = Compared {
                    hook: Hook::Publish,
                    channel: original.as_deref(),
                    user: user.as_deref(),
                };
                let emitted = &emits[emitted_before..];
                let live = verdict(&outcome, |o| judge_publish(o, current, emitted));
                self.compare_shadow(shadow, &event, &live, |sp| {
                    self.shadow_publish(sp, copy, valid_channel)
                });
            }
            match outcome {
                Ok(PublishOutcome::Unchanged) => {}
                Ok(PublishOutcome::Refused(reason)) => {
                    return Err(self.refused(p, Hook::Publish, &subject, &reason, "publication"));
                }
                Ok(PublishOutcome::Modified(changes)) => self.audit_changes(p, &subject, &changes),
                Err(e) => self.failed(p, Hook::Publish, &subject, e, "publication")?,
            }
        }
        let publication = slot.expect("present after the chain");
        Ok((publication, emits))
    }

    /// Runs the disconnect chain (notification only; failures are counted and logged).
    pub fn on_disconnect(&self, conn: &PluginConn, reason: &str) {
        let set = self.set();
        let key = EventKey {
            connection: Some(&conn.client),
            channel: None,
        };
        for live in set.connection.iter().filter(|p| p.has(Hook::Disconnect)) {
            let p = set.pick(live, key);
            if !p.has(Hook::Disconnect) {
                continue;
            }
            let wit = conn.to_wit();
            if let Err(e) = self.call(p, Hook::Disconnect, |w| {
                w.bindings.on_disconnect(&mut w.store, &wit, reason)
            }) {
                let subject = Subject {
                    channel: None,
                    user: Some(&conn.user),
                    client: Some(&conn.client),
                };
                let _ = self.failed(p, Hook::Disconnect, &subject, e, "disconnect");
            }
        }
    }

    /// One publish call: the publication moves into the instance's store for the call
    /// and back out after it (whatever the call did).
    pub(super) fn call_publish(
        &self,
        p: &LoadedPlugin,
        publication: &mut Option<PublicationState>,
    ) -> Result<PublishDecision, Error> {
        self.call(p, Hook::Publish, |w| {
            w.store.data_mut().publication = publication.take();
            let answer = w.bindings.on_publish(&mut w.store, publication_handle());
            *publication = w.store.data_mut().publication.take();
            answer
        })
    }

    /// One timed, counted call.
    pub(super) fn call<R>(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        f: impl FnOnce(&mut Warm) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        thread_local! {
            static TIMED: Countdown = const { Countdown::new() };
        }
        let start = TIMED
            .with(|timed| timed.pick(TIMED_EVERY))
            .then(Instant::now);
        let (result, ran) = p.pool.call(f);
        let budget = p.settings.inline_max_cpu_ms;
        if ran.as_millis() > u128::from(budget)
            && p.inline.swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(
                plugin = %p.id.name, version = p.id.version.as_str(), hook = hook.label(),
                cpu_ms = ran.as_millis() as u64, budget_ms = budget,
                "A plugin call used more CPU than plugins.inline_max_cpu_ms: this version runs on the plugin threads from now on"
            );
        }
        p.calls[hook.index()].inc();
        // A call that ran past a deadline tick is always recorded (with the CPU time the
        // deadline saw, when it was not the thread's sample).
        match start
            .map(|start| start.elapsed())
            .or((!ran.is_zero()).then_some(ran))
        {
            Some(took) => {
                p.stats.record(took);
                p.seconds[hook.index()].observe(took.as_secs_f64());
            }
            None => p.stats.count(),
        }
        result
    }

    pub(super) fn refused(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        refusal: &WitRefusal,
        what: &str,
    ) -> Refusal {
        let refused = Refusal::by_plugin(&p.id.name, what, refusal);
        let reason = answer::clip(&refusal.reason);
        match &refused.code {
            Some(code) => self.audit(p, hook, subject, "refused", &format!("[{code}] {reason}")),
            None => self.audit(p, hook, subject, "refused", reason),
        }
        refused
    }

    /// Counts and logs a failure; under `reject` it becomes a refusal.
    pub(super) fn failed(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        e: Error,
        what: &str,
    ) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering::Relaxed;
        p.stats.errors.fetch_add(1, Relaxed);
        if matches!(e, Error::Timeout { .. }) {
            p.stats.timeouts.fetch_add(1, Relaxed);
        }
        self.metrics.plugin_error(p.labels(e.kind()));
        tracing::warn!(
            plugin = %p.id.name, version = p.id.version.as_str(), hook = hook.label(),
            kind = e.kind(), error = e.to_string().as_str(), on_error = ?p.settings.on_error,
            "Plugin call failed; its instance is replaced"
        );
        let reason = format!("plugin {} failed: it {e}", p.id.name);
        match p.settings.on_error {
            OnError::Allow => {
                self.audit(p, hook, subject, "failed-allowed", &reason);
                Ok(())
            }
            OnError::Reject => {
                self.audit(p, hook, subject, "failed-refused", &reason);
                Err(Refusal {
                    plugin: p.id.name.clone(),
                    message: format!(
                        "the {what} was refused because {reason} (its on_error policy is reject)"
                    ),
                    code: None,
                })
            }
        }
    }

    fn audit_changes(&self, p: &LoadedPlugin, subject: &Subject<'_>, changes: &Changes) {
        if changes.data {
            self.audit(p, Hook::Publish, subject, "modified", "replaced data");
        }
        if let Some(channels) = &changes.rerouted {
            self.audit(
                p,
                Hook::Publish,
                subject,
                "rerouted",
                &format!("channels now {}", channels.join(", ")),
            );
        }
        for channel in &changes.emitted {
            self.audit(
                p,
                Hook::Publish,
                subject,
                "emitted",
                &format!("emitted a publication to {channel}"),
            );
        }
    }

    fn audit(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        decision: &'static str,
        reason: &str,
    ) {
        self.audit.record(&Record {
            time: now_ms(),
            plugin: &p.id.name,
            version: &p.id.version,
            sha256: &p.id.sha256,
            hook: hook.label(),
            channel: subject.channel,
            user: subject.user,
            client: subject.client,
            decision,
            reason,
        });
    }
}
