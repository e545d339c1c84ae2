//! WebAssembly plugins: the host of the `wit/` contract.
//!
//! ```text
//! plugins            this map and the re-exports
//!   config           [plugins] / [plugins.modules.NAME]: PluginsConfig, OnError; validation
//!   settings         the config resolved: ModuleSettings, PluginsSettings
//!   types            Error, PluginId, PluginLimits, Hook, HookSet
//!   runtime          Plugins: start, running the connect/subscribe/publish/disconnect
//!                    chains (a canary's share to the canary, a shadow beside)
//!   reload           the one reload entry point (reload_and_log); promote, rollback
//!   answer           a plugin's answer checked and applied (publish edits, connection
//!                    meta, refusals); pure, no Wasm
//!   meta             JSON-object metadata fields (set a key, write the object)
//!   set              the loaded set: LoadedPlugin, PluginSet (the chains)
//!   rollout          canaries (a stable share of events) and shadows (compared, never
//!                    applied) beside a live version
//!   shadow           running a shadow beside the live version and comparing verdicts
//!   view             the /admin/plugins view
//!   engine           one wasmtime Engine + epoch ticker; compile (disk cache); import policy
//!   cache            the compile cache: a private directory, HMAC-tagged entries
//!   host             bindgen! over wit/ (0.2.0); store data; host functions; memory limiter
//!   contract         which contract a component fits; calls into it (0.2.0 types)
//!   legacy           the 0.1.0 contract: its bindings, host functions, answers converted
//!   state            the `state` interface: a plugin's bounded key-value store
//!   plugin_metrics   the `metrics` interface: a plugin's counters and histograms
//!   threads          the plugin threads: hook calls run there, off the async workers
//!                    (except fast publish chains: see `Plugins::publish_chain`)
//!   chains           the unsubscribe, refresh and history chains (0.2.0 hooks)
//!   instance         warm instances of one version; one guarded call; failure classes
//!   deadline         a call's CPU-time budget, checked on the epoch ticks
//!   load             reading, compiling, instantiating and initialising a set
//!   audit            the audit trail (tracing target `audit` + JSONL file)
//!   stats            per-plugin counts and hook-time quantiles
//!   watch            the plugins directory watcher
//!   replay           `hookwire plugin inspect` / `hookwire plugin test`
//!   scaffold         `hookwire plugin new`: a project per language, from scaffold/
//! ```
//!
//! Every event takes one snapshot of the loaded set, so it is handled by exactly one
//! version of each plugin; a reload builds a whole new set off the hot path and swaps it
//! in atomically. A namespace with no plugins pays one map lookup. Every reload (file
//! watcher, SIGHUP, `POST /admin/plugins/reload`) goes through
//! [`Plugins::reload_and_log`].

pub(crate) mod answer;
mod audit;
mod cache;
pub mod capture;
mod chains;
pub mod config;
mod contract;
mod deadline;
pub mod engine;
pub mod host;
pub mod imports;
mod instance;
mod legacy;
mod load;
mod meta;
mod plugin_metrics;
mod precheck;
mod reload;
pub mod replay;
pub mod rollout;
mod runtime;
pub mod scaffold;
mod set;
mod settings;
mod shadow;
pub mod state;
mod stats;
mod threads;
mod types;
mod view;
mod watch;

pub use answer::{Emit, Refusal};
pub use config::{OnError, PluginModuleConfig, PluginsConfig};
pub use host::{PluginConn, PublicationState, PublishSource};
pub use reload::{ReloadTrigger, RolloutError};
pub use runtime::{Plugins, PublishChain};
pub use set::{LoadedPlugin, PluginSet};
pub use settings::{ModuleSettings, PluginsSettings};
pub use threads::Overloaded;
pub use types::{Error, Hook, PluginId, PluginLimits};
pub use types::{Failure, ReloadReport};
pub use view::{PluginView, PluginsView};
pub use watch::spawn as watch;
