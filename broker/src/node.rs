//! The running node: everything a session or listener needs, built once from config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::channel::Namespaces;
use crate::config::Config;
use crate::history::{HistoryStore, MemoryHistory};
use crate::hub::Hub;
use crate::publish::Pipeline;

/// Per-connection settings, resolved from `[limits]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub outbound_queue_frames: usize,
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Upper bound of the reconnect delay hint sent with 1012.
    pub reconnect_jitter_ms: u64,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let l = &config.limits;
        Self {
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            ping_interval: Duration::from_millis(l.ping_interval_ms),
            pong_timeout: Duration::from_millis(l.pong_timeout_ms),
            outbound_queue_frames: l.outbound_queue_frames,
            max_subscriptions: l.max_subscriptions,
            max_frame_bytes: l.max_frame_bytes,
            read_buffer_bytes: l.read_buffer_bytes,
            write_buffer_bytes: l.write_buffer_bytes,
            reconnect_jitter_ms: 5_000,
        }
    }
}

/// Counters kept on the hot path with relaxed atomics.
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    connections_total: AtomicU64,
    auth_failures: AtomicU64,
}

impl Stats {
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn auth_failed(&self, _reason: &'static str) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

pub struct Node {
    pub name: String,
    pub settings: Settings,
    pub config: Arc<Config>,
    pub verifier: Verifier,
    pub namespaces: Arc<Namespaces>,
    pub hub: Arc<Hub>,
    pub pipeline: Pipeline,
    /// Cancelled once to start shutdown; every listener and session watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to drain.
    pub tasks: TaskTracker,
    pub stats: Stats,
    next_key: AtomicU64,
}

impl Node {
    pub fn new(config: Config, verifier: Verifier) -> Arc<Self> {
        let history: Arc<dyn HistoryStore> = Arc::new(MemoryHistory::new());
        let namespaces = Arc::new(Namespaces::from_config(&config));
        let hub = Arc::new(Hub::new(history));
        let pipeline = Pipeline::new(
            hub.clone(),
            namespaces.clone(),
            config.limits.dedup_window_ms,
        );
        let name = if config.node_name.is_empty() {
            default_node_name()
        } else {
            config.node_name.clone()
        };
        Arc::new(Self {
            name,
            settings: Settings::from_config(&config),
            config: Arc::new(config),
            verifier,
            namespaces,
            hub,
            pipeline,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stats: Stats::default(),
            next_key: AtomicU64::new(1),
        })
    }

    /// A process-unique key for a new connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

fn default_node_name() -> String {
    use rand::Rng;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(crate::channel::is_name_byte))
        .unwrap_or_else(|| "node".into());
    format!("{host}-{:04x}", rand::rng().random::<u16>())
}
