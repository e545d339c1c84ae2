//! The running node: everything a session or listener needs, built once from config.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Claims, Revocations, Verifier};
use crate::channel::Namespaces;
use crate::config::Config;
use crate::history::{HistoryStore, MemoryHistory};
use crate::hub::{Hub, JoinLeaveCap};
use crate::limits::{ConnectionLimits, RateLimits};
use crate::metrics::Metrics;
use crate::plugins::Plugins;
use crate::protocol::{CloseCode, Disconnect};
use crate::publish::Pipeline;
use crate::registry::Registry;
use crate::sequencer::{Control, Federation, Local, LocalPresence, Presence, Sequencer};

/// Per-connection settings, resolved from `[limits]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
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
            outbound_queue_bytes: l.outbound_queue_bytes,
            max_subscriptions: l.max_subscriptions,
            max_frame_bytes: l.max_frame_bytes,
            read_buffer_bytes: l.read_buffer_bytes,
            write_buffer_bytes: l.write_buffer_bytes,
            reconnect_jitter_ms: 5_000,
        }
    }
}

/// Keys for the server API (`/api/*`) and the admin endpoints (`/admin/*`), from the
/// environment. `None`: those endpoints answer 401 to everything.
#[derive(Clone, Default)]
pub struct ApiKeys {
    pub api: Option<String>,
    pub admin: Option<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("api", &self.api.as_ref().map(|_| "set"))
            .field("admin", &self.admin.as_ref().map(|_| "set"))
            .finish()
    }
}

pub struct Node {
    pub name: String,
    pub settings: Settings,
    pub config: Arc<Config>,
    pub verifier: Verifier,
    pub namespaces: Arc<Namespaces>,
    pub hub: Arc<Hub>,
    /// The channels' log: this node's memory, or the cluster's (see `sequencer`).
    pub log: Arc<dyn Sequencer>,
    /// Who is in a channel: this node's subscribers, or every node's.
    pub presence: Arc<dyn Presence>,
    pub pipeline: Pipeline,
    /// WebAssembly plugins (an empty set when none is configured).
    pub plugins: Arc<Plugins>,
    /// Cancelled once to start shutdown; every listener watches it (sessions are closed
    /// through the registry, see [`Node::begin_shutdown`]). Cancel it
    /// through [`Node::begin_shutdown`], which sets `draining` first.
    pub shutdown: CancellationToken,
    /// Set when shutdown begins: what the publish path reads (tokio-util's `is_cancelled`
    /// takes the token's lock, once per publication).
    draining: Arc<AtomicBool>,
    /// Every connection task, so shutdown can wait for them to drain.
    pub tasks: TaskTracker,
    /// The runtime the sessions run on (set when the first one parks): a parked
    /// session's wake-up, from any thread, spawns its task there (`session::park`).
    pub runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    pub metrics: Arc<Metrics>,
    pub rate_limits: Arc<RateLimits>,
    pub connections: Arc<ConnectionLimits>,
    /// Every open connection, for operator actions.
    pub registry: Registry,
    pub revocations: Revocations,
    pub keys: ApiKeys,
    /// Cluster-wide control and readiness, in a cluster.
    pub cluster: Option<Arc<dyn Control>>,
    next_key: AtomicU64,
}

impl Node {
    /// A node without plugins (tests, tools).
    pub fn new(config: Config, verifier: Verifier, keys: ApiKeys) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let plugins = Plugins::disabled(metrics.clone());
        Self::with_plugins(
            config,
            verifier,
            keys,
            metrics,
            plugins,
            Revocations::default(),
            None,
        )
    }

    /// A node whose plugins are already loaded (`Plugins::start`), with the metrics
    /// they record into.
    pub fn with_plugins(
        config: Config,
        verifier: Verifier,
        keys: ApiKeys,
        metrics: Arc<Metrics>,
        plugins: Arc<Plugins>,
        revocations: Revocations,
        federation: Option<Federation>,
    ) -> Arc<Self> {
        // In a cluster this node's history is a replica of the channels it serves.
        let history: Arc<dyn HistoryStore> = match federation {
            Some(_) => Arc::new(MemoryHistory::replica(&config.history)),
            None => Arc::new(MemoryHistory::from_config(&config.history)),
        };
        let namespaces = Arc::new(Namespaces::new(
            &config.namespaces,
            &config.default_namespace,
        ));
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits, &config.namespaces));
        let mut hub = Hub::new(history)
            .with_max_reply_bytes(config.limits.max_reply_bytes)
            .with_join_leave_cap(JoinLeaveCap {
                limits: rate_limits.clone(),
                skipped: metrics.join_leave_skipped.clone(),
            });
        if let Some(f) = &federation {
            hub = hub.with_announce(f.announce.clone());
        }
        let hub = Arc::new(hub);
        let shutdown = CancellationToken::new();
        let draining = Arc::new(AtomicBool::new(false));
        let (log, presence): (Arc<dyn Sequencer>, Arc<dyn Presence>) = match &federation {
            Some(f) => (f.log.clone(), f.presence.clone()),
            None => (
                Arc::new(Local::new(hub.clone())),
                Arc::new(LocalPresence::new(hub.clone())),
            ),
        };
        let pipeline = Pipeline::new(
            log.clone(),
            namespaces.clone(),
            rate_limits.clone(),
            metrics.clone(),
            plugins.clone(),
            &config,
            draining.clone(),
        );
        let (name, cluster) = match federation {
            Some(f) => (f.name, Some(f.control)),
            None => (node_name(&config), None),
        };
        Arc::new(Self {
            name,
            settings: Settings::from_config(&config),
            verifier,
            namespaces,
            hub,
            log,
            presence,
            pipeline,
            plugins,
            shutdown,
            draining,
            tasks: TaskTracker::new(),
            runtime: std::sync::OnceLock::new(),
            connections: ConnectionLimits::new(&config.connections),
            config: Arc::new(config),
            metrics,
            rate_limits,
            registry: Registry::default(),
            revocations,
            keys,
            cluster,
            next_key: AtomicU64::new(1),
        })
    }

    /// A process-unique key for a new connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Verifies a token and checks that its user is not revoked (`connect` and `refresh`
    /// both go through here); failures are counted by reason.
    pub fn authenticate(&self, token: &str) -> Result<Claims, auth::Error> {
        self.verifier
            .verify(token)
            .and_then(|claims| {
                self.revocations
                    .check(&claims, crate::protocol::now_ms() / 1000)?;
                Ok(claims)
            })
            .inspect_err(|e| self.metrics.auth_failed(e.reason()))
    }

    /// Starts shutdown: publishes are refused from now on, every listener sees the token
    /// cancelled, and every registered connection is asked to close with 1012 after what
    /// it has queued. A session that registers later sees `draining` and closes itself
    /// (the flag is set before the registry is walked, and both take its shard lock).
    ///
    /// Sessions do not wait on the token: a pending token wait takes two process-wide
    /// locks each time it is polled (tokio-util's `is_cancelled`, tokio's `Notify`),
    /// which every session's wake-up would pay.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
        self.registry.close_all(|| self.restart_disconnect());
    }

    /// The `disconnect` of a drain: 1012, with a jittered reconnect delay so clients do
    /// not all come back at once.
    pub fn restart_disconnect(&self) -> Disconnect {
        use rand::Rng;
        let mut d = Disconnect::new(
            CloseCode::Restart,
            "the server is restarting; reconnect and recover",
        );
        let jitter = self.settings.reconnect_jitter_ms.max(500);
        d.delay_ms = Some(rand::rng().random_range(500..=jitter));
        d
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// `node_name`, or the host name plus a random suffix.
pub fn node_name(config: &Config) -> String {
    if config.node_name.is_empty() {
        default_node_name()
    } else {
        config.node_name.clone()
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
