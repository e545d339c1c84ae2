//! The host side of the WIT contract (0.2.0): `bindgen!` over `wit/`, the per-instance
//! store data, and what the host provides to plugins (`host` interface, the
//! `publication` resource, the memory limiter; `state` and `metrics` live in their own
//! files). The 0.1.0 contract is served by `legacy`, which reuses all of this.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use wasmtime::component::Resource;

use super::deadline::Deadline;
use super::meta::{self, MetaFields};
use super::plugin_metrics::PluginMetrics;
use super::state::StateStore;
use super::types::{PluginId, PluginLimits};
use crate::logging::Escaped;
use crate::transport::TransportKind;

// The generated code has `unsafe` blocks of its own (lowering and lifting); nothing else
// in the broker may.
#[allow(unsafe_code)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: trappable },
        additional_derives: [PartialEq],
        with: {
            "hookwire:plugin/types.publication": super::PublicationResource,
        },
    });
}

pub use bindings::Plugin as PluginBindings;
pub use bindings::exports::hookwire::plugin as exported;
pub use bindings::hookwire::plugin::host::LogLevel;
pub use bindings::hookwire::plugin::types::{
    ConnectDecision, Connection, Decision, EntryEdit, ExtraPublication, HistoryDecision,
    HistoryEntry, MetaField, PublishDecision, PublishEdit, PublishSource, RefreshDecision,
    Refusal as WitRefusal,
};
use bindings::hookwire::plugin::{host, types};
pub use bindings::hookwire::plugin::{metrics as wit_metrics, state as wit_state};
pub use host::Host as HostApi;
pub use types::{HostPublication, Transport};

/// The type behind `borrow<publication>` handles. The host never keeps a table of
/// publications: at most one is being processed per instance at a time, and it lives
/// in [`StoreData::publication`]; the handle only names it.
pub struct PublicationResource;

impl From<&str> for WitRefusal {
    /// A refusal without a code.
    fn from(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            code: None,
        }
    }
}

/// The single handle value a call passes for the publication it processes.
pub fn publication_handle() -> Resource<PublicationResource> {
    Resource::new_borrow(0)
}

/// A connection as hooks see it, built once per connection (and again on refresh).
#[derive(Debug, Clone)]
pub struct PluginConn {
    pub id: u64,
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// The token's claims, JSON object text.
    pub claims: Arc<str>,
    pub transport: TransportKind,
    pub remote: String,
    /// Metadata attached by `on-connect` hooks, JSON object text.
    pub meta: Arc<str>,
    /// `claims` by name, parsed on the first `claim` call of the connection's life.
    pub claim_index: OnceLock<HashMap<String, Box<RawValue>>>,
}

impl PluginConn {
    /// The same connection with a refreshed token's claims.
    pub fn with_claims(&self, claims: Arc<str>) -> Self {
        Self {
            claims,
            claim_index: OnceLock::new(),
            ..self.clone()
        }
    }

    /// One claim's JSON text (claims that are not a JSON object have none).
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claim_index
            .get_or_init(|| serde_json::from_str(&self.claims).unwrap_or_default())
            .get(name)
            .map(|v| v.get())
    }

    pub fn to_wit(&self) -> Connection {
        Connection {
            id: self.id,
            client: self.client.to_string(),
            user: self.user.to_string(),
            claims: self.claims.to_string(),
            transport: match self.transport {
                TransportKind::WebSocket => Transport::Websocket,
                TransportKind::WebTransport => Transport::Webtransport,
                TransportKind::Memory => Transport::Other,
            },
            remote_addr: self.remote.clone(),
            meta: self.meta.to_string(),
        }
    }
}

/// A publication going through a `publish` chain: what the plugins see and change.
#[derive(Debug, Clone)]
pub struct PublicationState {
    pub source: PublishSource,
    pub channels: Vec<String>,
    pub user: Option<Arc<str>>,
    /// JSON text.
    pub data: Box<RawValue>,
    /// `meta` fields added so far, in order; a later value for a key replaces it.
    pub meta: MetaFields,
    pub connection: Option<Arc<PluginConn>>,
}

impl PublicationState {
    /// `meta` as a JSON object (`None` when no plugin added any).
    pub fn meta_json(&self) -> Option<Box<RawValue>> {
        if self.meta.is_empty() {
            return None;
        }
        RawValue::from_string(meta::object_text(&self.meta)).ok()
    }

    /// Sets one `meta` field (a later value for a key replaces it).
    pub fn set_meta(&mut self, key: String, value: Box<RawValue>) {
        meta::set(&mut self.meta, key, value);
    }
}

/// Everything one plugin instance's `Store` holds.
pub struct StoreData {
    pub plugin: Arc<PluginId>,
    pub limiter: Limiter,
    /// The publication the current `on-publish` call processes.
    pub publication: Option<PublicationState>,
    /// The current call's CPU-time deadline.
    pub deadline: Deadline,
    /// The plugin's shared state (every instance and version of the plugin).
    pub state: Arc<StateStore>,
    /// The metrics the plugin defines (every instance and version of the plugin).
    pub metrics: Arc<PluginMetrics>,
    /// The plugin version's log-rate gate (shared by its instances).
    log_gate: Arc<LogGate>,
    /// Log lines written during the current call (bounded; see `log`).
    log_budget: u32,
    started: Instant,
}

/// What every instance of one plugin version shares: the log-rate gate, and the
/// plugin's state and metrics (those are the plugin's, over its versions).
#[derive(Clone, Default)]
pub struct Shared {
    pub log: Arc<LogGate>,
    pub state: Arc<StateStore>,
    pub metrics: Arc<PluginMetrics>,
}

/// Lines a plugin may log per call before the host drops the rest (and says so).
const LOG_LINES_PER_CALL: u32 = 20;
/// Lines per second one plugin version may log, over all its instances and calls, and
/// the burst above that rate.
const LOG_LINES_PER_SEC: u32 = 100;
const LOG_LINES_BURST: u32 = 200;

/// A plugin's log rate: lines over [`LOG_LINES_PER_SEC`] are dropped and counted, and
/// the next line that passes says how many were, so a chatty plugin cannot flood the
/// broker's log (or slow every call down writing it).
pub struct LogGate {
    limiter: governor::DefaultDirectRateLimiter,
    dropped: std::sync::atomic::AtomicU64,
}

impl Default for LogGate {
    fn default() -> Self {
        let per_sec = std::num::NonZeroU32::new(LOG_LINES_PER_SEC).expect("non-zero");
        let burst = std::num::NonZeroU32::new(LOG_LINES_BURST).expect("non-zero");
        Self {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_sec).allow_burst(burst),
            ),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LogGate {
    /// `Some(lines dropped since the last line that passed)`, or `None`: drop this one.
    fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.limiter.check().is_ok() {
            Some(self.dropped.swap(0, Relaxed))
        } else {
            self.dropped.fetch_add(1, Relaxed);
            None
        }
    }
}
/// Longest log line kept, in bytes.
const LOG_LINE_MAX: usize = 2_048;

impl StoreData {
    pub fn new(plugin: Arc<PluginId>, limits: &PluginLimits, shared: &Shared) -> Self {
        Self {
            state: shared.state.clone(),
            metrics: shared.metrics.clone(),
            log_gate: shared.log.clone(),
            plugin,
            limiter: Limiter::new(limits.memory_bytes),
            publication: None,
            deadline: Deadline::new(limits.timeout_ms),
            log_budget: LOG_LINES_PER_CALL,
            started: Instant::now(),
        }
    }

    /// Called before each hook call.
    pub fn begin_call(&mut self) {
        self.log_budget = LOG_LINES_PER_CALL;
        self.deadline.begin();
    }

    fn publication(&self) -> wasmtime::Result<&PublicationState> {
        self.publication
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("publication used outside on-publish"))
    }
}

/// The memory cap of one instance. Unlike `StoreLimits` it records that it refused a
/// growth, so a trap that follows is reported as the memory cap rather than a crash.
pub struct Limiter {
    pub max_bytes: usize,
    pub refused: bool,
    /// The size of the instance's largest memory so far (memories never shrink).
    pub largest: usize,
}

impl Limiter {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            refused: false,
            largest: 0,
        }
    }
}

/// Tables beyond this many elements are refused (a table bomb is a memory bomb).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.largest = self.largest.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }
}

impl host::Host for StoreData {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        use tracing::Level;
        let level = match level {
            LogLevel::Trace => Level::TRACE,
            LogLevel::Debug => Level::DEBUG,
            LogLevel::Info => Level::INFO,
            LogLevel::Warn => Level::WARN,
            LogLevel::Error => Level::ERROR,
        };
        // Lines the log filter drops anyway cost nothing and use no budget.
        let enabled = match level {
            Level::TRACE => tracing::enabled!(target: "plugin", Level::TRACE),
            Level::DEBUG => tracing::enabled!(target: "plugin", Level::DEBUG),
            Level::INFO => tracing::enabled!(target: "plugin", Level::INFO),
            Level::WARN => tracing::enabled!(target: "plugin", Level::WARN),
            _ => tracing::enabled!(target: "plugin", Level::ERROR),
        };
        if !enabled || self.log_budget == 0 {
            return Ok(());
        }
        self.log_budget -= 1;
        let Some(dropped) = self.log_gate.admit() else {
            return Ok(());
        };
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let end = crate::protocol::truncate_utf8(&message, LOG_LINE_MAX).len();
            message.truncate(end);
            message.push_str(" [truncated]");
        }
        if self.log_budget == 0 {
            message.push_str(" [further lines of this call dropped]");
        }
        if dropped > 0 {
            message.push_str(&format!(
                " [{dropped} earlier line(s) dropped: over {LOG_LINES_PER_SEC} lines/s]"
            ));
        }
        let id = &self.plugin;
        match level {
            Level::TRACE => {
                tracing::trace!(target: "plugin", plugin = %id.name, version = id.version.as_str(), "{}", Escaped(&message))
            }
            Level::DEBUG => {
                tracing::debug!(target: "plugin", plugin = %id.name, version = id.version.as_str(), "{}", Escaped(&message))
            }
            Level::INFO => {
                tracing::info!(target: "plugin", plugin = %id.name, version = id.version.as_str(), "{}", Escaped(&message))
            }
            Level::WARN => {
                tracing::warn!(target: "plugin", plugin = %id.name, version = id.version.as_str(), "{}", Escaped(&message))
            }
            _ => {
                tracing::error!(target: "plugin", plugin = %id.name, version = id.version.as_str(), "{}", Escaped(&message))
            }
        }
        Ok(())
    }

    fn now_unix_nanos(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64))
    }

    fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        Ok(self.started.elapsed().as_nanos() as u64)
    }
}

impl types::Host for StoreData {}

impl types::HostPublication for StoreData {
    fn source(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<PublishSource> {
        Ok(self.publication()?.source)
    }

    fn channels(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<Vec<String>> {
        Ok(self.publication()?.channels.clone())
    }

    fn user(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<Option<String>> {
        Ok(self.publication()?.user.as_deref().map(str::to_string))
    }

    fn data_len(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<u64> {
        Ok(self.publication()?.data.get().len() as u64)
    }

    fn data(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.publication()?.data.get().as_bytes().to_vec())
    }

    fn data_range(
        &mut self,
        _: Resource<PublicationResource>,
        offset: u64,
        len: u64,
    ) -> wasmtime::Result<Vec<u8>> {
        let data = self.publication()?.data.get().as_bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn meta(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<String> {
        Ok(self
            .publication()?
            .meta_json()
            .map_or_else(|| "{}".to_string(), |m| m.get().to_string()))
    }

    fn connection(
        &mut self,
        _: Resource<PublicationResource>,
    ) -> wasmtime::Result<Option<Connection>> {
        Ok(self.publication()?.connection.as_ref().map(|c| c.to_wit()))
    }

    fn claim(
        &mut self,
        _: Resource<PublicationResource>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let publication = self.publication()?;
        Ok(publication
            .connection
            .as_ref()
            .and_then(|c| c.claim(&name))
            .map(str::to_string))
    }

    fn drop(&mut self, _: Resource<PublicationResource>) -> wasmtime::Result<()> {
        // Plugins only ever hold borrows; the host owns the publication.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(claims: &str) -> PluginConn {
        PluginConn {
            id: 1,
            client: "c".into(),
            user: "alice".into(),
            claims: claims.into(),
            transport: TransportKind::WebSocket,
            remote: "127.0.0.1:1".into(),
            meta: "{}".into(),
            claim_index: OnceLock::new(),
        }
    }

    #[test]
    fn claims_are_read_one_by_one_and_follow_a_refresh() {
        let v = view(r#"{"sub":"alice","name":"Alice","team":{"id":7}}"#);
        assert_eq!(v.claim("name"), Some(r#""Alice""#));
        assert_eq!(v.claim("team"), Some(r#"{"id":7}"#));
        assert_eq!(v.claim("role"), None);
        let refreshed = v.with_claims(r#"{"sub":"alice","name":"Alice B."}"#.into());
        assert_eq!(refreshed.claim("name"), Some(r#""Alice B.""#));
        assert_eq!(refreshed.claim("team"), None);
        assert_eq!(view("not json").claim("sub"), None);
    }
}
