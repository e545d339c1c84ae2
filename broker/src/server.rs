//! Start-up and shutdown: bind listeners, run until a signal, drain.
//!
//! Shutdown order: cancel the node's token (listeners stop accepting, `/ready` answers 503,
//! every session queues `disconnect` 1012 behind what it already had queued) → wait for
//! the connection tasks to flush and close, at most `shutdown.drain_ms` → stop the
//! cluster link (NATS connections flushed) → stop the sweeper and the admin listener →
//! return.
//!
//! Start order: plugins and the cluster link's connections (`bind`), then in `run` the
//! plugin watcher, the admin listener, the sweeper, the cluster link's tasks, and last
//! the client listener.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

use crate::admin;
use crate::auth::Verifier;
use crate::config::{Config, EnvOverrides};
use crate::logging::LogControl;
use crate::node::{ApiKeys, Node};
use crate::protocol::now_ms;
use crate::transport::ws::pages::{DevCert, DevPages, Pages};
use crate::transport::wt::tls;
use crate::transport::{ws, wt};
pub use config::ShutdownConfig;

/// A bound, not yet running, server.
pub struct Server {
    pub node: Arc<Node>,
    /// The NATS link, in a cluster: started and stopped here, with the listeners.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Every listener, in start order: the client listeners stop accepting when shutdown
    /// begins (their sessions drain), the operations listener serves through the drain.
    listeners: Vec<Listener>,
    /// Plain HTTP on the client listener (`/client.js`; with `--dev`, the demo).
    pages: Arc<Pages>,
}

/// How the process was started.
#[derive(Default)]
pub struct Options {
    /// `--dev`: a self-signed certificate for WebTransport when none is configured, and
    /// the demo page with `/dev/token` and `/dev/cert-hash`.
    pub dev: bool,
    /// The HS256 secret `/dev/token` signs with (only with `dev`).
    pub dev_token_secret: Option<Vec<u8>>,
}

/// A listener the server owns.
enum Listener {
    /// WebSocket clients (`ws_addr`, path `/ws`).
    WebSocket(TcpListener),
    /// WebTransport clients (`quic.addr`, UDP, path `/wt`).
    WebTransport(quinn::Endpoint),
    /// Health, readiness, metrics, the server API and admin (`admin_addr`).
    Admin(TcpListener),
}

impl Listener {
    fn name(&self) -> &'static str {
        match self {
            Self::WebSocket(_) => "ws",
            Self::WebTransport(_) => "quic",
            Self::Admin(_) => "admin",
        }
    }

    /// What it serves, for the start-up log.
    fn serves(&self) -> &'static str {
        match self {
            Self::WebSocket(_) => "WebSocket clients at /ws, and /client.js",
            Self::WebTransport(_) => "WebTransport clients at /wt (UDP)",
            Self::Admin(_) => "health, readiness, metrics, the server API and admin",
        }
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::WebSocket(l) | Self::Admin(l) => l.local_addr().expect("bound"),
            Self::WebTransport(e) => e.local_addr().expect("bound"),
        }
    }
}

/// Connections the kernel completes and queues before the accept loop takes them. The
/// kernel caps it at `net.core.somaxconn` (4,096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 4_096;

/// A TCP listener whose accept queue holds a burst ([`LISTEN_BACKLOG`]), and whose
/// accepted sockets have `TCP_NODELAY` set. Rust's
/// `TcpListener::bind` asks for 128: a burst of more connects than that at once (clients
/// reconnecting after a deploy; the bench's 200 at a time) overflowed the queue, the
/// kernel dropped their SYNs, and each such client retried only a second later.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std's bind does: a restarted broker binds while its old sockets are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // Frames go out as soon as they are written; accepted sockets inherit this (Linux),
    // which saves a system call per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// Binds the listeners (port 0 picks a free port; see [`Server::ws_addr`]).
    pub async fn bind(
        config: Config,
        verifier: Verifier,
        keys: ApiKeys,
        options: Options,
    ) -> anyhow::Result<Self> {
        let ws_addr = config.ws_addr;
        let admin_addr = config.admin_addr;
        let ws_listener =
            listen(ws_addr).with_context(|| format!("cannot listen on ws_addr {ws_addr}"))?;
        let admin_listener = listen(admin_addr)
            .with_context(|| format!("cannot listen on admin_addr {admin_addr}"))?;
        let quic = wt::listen(&config.quic, options.dev, config.data_dir())?;
        let pages = Arc::new(Pages {
            dev: options.dev.then(|| DevPages {
                token_secret: options.dev_token_secret,
                cert: quic.as_ref().map(|(endpoint, identity)| DevCert {
                    sha256: tls::hex(&identity.sha256()),
                    addr: endpoint.local_addr().expect("bound"),
                }),
            }),
        });
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let plugins = crate::plugins::Plugins::start(&config, metrics.clone())?;
        let revocations = crate::auth::Revocations::open(config.data_dir())?;
        if !revocations.persistent() {
            tracing::warn!("data_dir is empty: revocations end when the process does");
        }
        let cluster = match config.cluster.enabled() {
            true => {
                let name = crate::node::node_name(&config);
                let cluster = crate::cluster::Cluster::connect(&config, &name, &metrics).await?;
                tracing::info!(node = %name, nats = ?config.cluster.nats_url, "Joining a cluster through NATS");
                Some(cluster)
            }
            false => None,
        };
        let node = Node::with_plugins(
            config,
            verifier,
            keys,
            metrics,
            plugins,
            revocations,
            cluster.as_ref().map(|c| c.federation()),
        );
        // Logged and started in this order: the WebSocket listener last.
        let mut listeners = vec![Listener::Admin(admin_listener)];
        listeners.extend(quic.map(|(endpoint, _)| Listener::WebTransport(endpoint)));
        listeners.push(Listener::WebSocket(ws_listener));
        Ok(Self {
            node,
            cluster,
            listeners,
            pages,
        })
    }

    fn addr_of(&self, pick: fn(&Listener) -> bool) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| pick(l))
            .map(Listener::local_addr)
            .expect("every server has this listener")
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.addr_of(|l| matches!(l, Listener::WebSocket(_)))
    }

    /// The QUIC listener's address, when WebTransport is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find_map(|l| match l {
            Listener::WebTransport(e) => e.local_addr().ok(),
            _ => None,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.addr_of(|l| matches!(l, Listener::Admin(_)))
    }

    /// Serves until the node's shutdown token is cancelled, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let node = self.node;
        for listener in &self.listeners {
            tracing::info!(listener = listener.name(), addr = %listener.local_addr(), serves = listener.serves(), "Listening");
        }
        if let Some(dir) = node.plugins.watched_dir() {
            match crate::plugins::watch(node.plugins.clone(), &dir, node.shutdown.clone()) {
                Ok(()) => tracing::info!(dir = %dir.display(), "Watching plugins"),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "Cannot watch the plugins directory; reload with SIGHUP or POST /admin/plugins/reload")
                }
            }
        }
        tracing::info!(node = %node.name, "Ready");
        raise_file_limit(node.config.connections.max);

        let sweeper = tokio::spawn(sweep(node.clone()));
        // Keepalive and token expiry: one ticker for every session (see `session::tick`).
        tokio::spawn(crate::session::tick(node.clone()));
        if let Some(cluster) = &self.cluster {
            cluster.start(&node);
        }
        // Operations listeners run until after the drain; client listeners until
        // shutdown begins.
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let mut operations = Vec::new();
        let mut clients: Vec<futures_util::future::BoxFuture<'static, ()>> = Vec::new();
        for listener in self.listeners {
            match listener {
                Listener::Admin(l) => {
                    let stop = admin_stop.clone();
                    let app = admin::router(node.clone());
                    operations.push(tokio::spawn(async move {
                        axum::serve(l, app)
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await
                    }));
                }
                Listener::WebSocket(l) => {
                    clients.push(Box::pin(ws::serve(l, node.clone(), self.pages.clone())));
                }
                Listener::WebTransport(e) => clients.push(Box::pin(wt::serve(e, node.clone()))),
            }
        }
        // The accept loops run on the workers, not on the main thread: a connection is
        // then spawned onto the accepting worker's own queue instead of waking a worker
        // for each one (idle19k: 14.7k → 17.3–18.0k connections/s, 58 → 55 µs of broker
        // CPU and 3.07 → 2.87 KiB each).
        let accepting = tokio::spawn(futures_util::future::join_all(clients));
        if let Err(e) = accepting.await {
            tracing::error!(error = %e, "An accept loop failed");
        }

        // The token is cancelled: sessions are closing with 1012 after flushing.
        let open = node.connections.open();
        tracing::info!(
            connections = open,
            drain_ms = node.config.shutdown.drain_ms,
            "Draining"
        );
        // The whole shutdown, admin listener included, ends within drain_ms (plus a
        // moment to close what is left).
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(node.config.shutdown.drain_ms);
        node.tasks.close();
        let drained = tokio::time::timeout_at(deadline, node.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                connections = node.connections.open(),
                "Drain deadline passed; closing the remaining connections"
            );
        }
        // The sessions are gone (their last publications were answered and their leaves
        // announced): the cluster link goes next.
        if let Some(cluster) = &self.cluster {
            cluster.stop().await;
        }
        sweeper.abort();
        admin_stop.cancel();
        // In-flight admin requests (a slow client included) get what is left of the
        // deadline, then the listener's task is dropped.
        let admin_deadline = deadline.max(tokio::time::Instant::now()) + ADMIN_CLOSE_MARGIN;
        for task in operations {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(admin_deadline, task).await.is_err() {
                abort.abort();
                tracing::warn!("Admin requests still open at the drain deadline were cut off");
            }
        }
        tracing::info!("Stopped");
        Ok(())
    }
}

/// How long admin requests still open after the drain may take to finish.
const ADMIN_CLOSE_MARGIN: Duration = Duration::from_millis(250);

/// Raises the open-files soft limit to the hard limit (as Go's runtime does), and warns
/// when `connections.max` can still exceed it: past it, accepts fail and clients wait
/// instead of getting a 1013.
fn raise_file_limit(max_connections: crate::rate::Cap) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read or raise the open-files limit");
            return;
        }
    };
    // Listeners, logs and the admin API need some descriptors too.
    let usable = limit.saturating_sub(64);
    let over = max_connections
        .get()
        .is_none_or(|max| u64::from(max.get()) > usable);
    if over {
        tracing::warn!(
            open_files_limit = limit,
            connections_max = max_connections.raw(),
            "connections.max is above what the open-files limit allows; set it to at most {usable} or raise the hard limit"
        );
    } else {
        tracing::debug!(open_files_limit = limit, "Open-files limit");
    }
}

/// Periodically expires history, idempotency keys, idle limiter keys and revocations, and
/// samples the gauges that are cheaper to read than to keep up to date.
async fn sweep(node: Arc<Node>) {
    let cfg = &node.config.history;
    let mut every = tokio::time::interval(Duration::from_millis(cfg.sweep_interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = now_ms();
        let history = node
            .hub
            .history()
            .sweep(now, cfg.stream_idle_ttl_secs * 1000);
        node.pipeline.sweep(now);
        node.rate_limits.sweep();
        if let Err(e) = node.revocations.sweep(now / 1000) {
            tracing::error!(error = %e, "Cannot save the revocation list");
        }
        let (queued, longest) = node.registry.queue_depths();
        let m = &node.metrics;
        m.history_swept(&history);
        m.outbound_queue_frames.set(queued as i64);
        m.outbound_queue_frames_max.set(longest as i64);
        let (running, waiting) = node.connections.handshake_states();
        m.handshakes
            .with_label_values(&["running"])
            .set(i64::from(running));
        m.handshakes
            .with_label_values(&["waiting"])
            .set(i64::from(waiting));
    }
}

/// What SIGHUP reloads: the config file's `log.level` and plugins (other settings need a
/// restart).
pub struct Reload {
    pub config_path: std::path::PathBuf,
    pub path_is_default: bool,
    pub log: LogControl,
}

impl Reload {
    /// Re-reads the config; a bad file is logged and changes nothing.
    fn apply(&self, running: &Config) -> Option<Config> {
        let loaded = match Config::load(
            &self.config_path,
            self.path_is_default,
            &EnvOverrides::from_process(),
        ) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Reload failed; the running config is unchanged");
                return None;
            }
        };
        match self.log.set_level(&loaded.config.log.level) {
            Ok(()) => tracing::info!(level = %loaded.config.log.level, "Reloaded log.level"),
            Err(e) => tracing::error!(error = %e, "Reload of log.level failed"),
        }
        let mut rest = loaded.config.clone();
        rest.log = running.log.clone();
        rest.plugins = running.plugins.clone();
        for (name, ns) in rest.namespaces.iter_mut() {
            ns.plugins = running
                .namespaces
                .get(name)
                .map(|n| n.plugins.clone())
                .unwrap_or_default();
        }
        if &rest != running {
            tracing::warn!(
                "Settings other than log.level and plugins changed in the file; they take effect after a restart"
            );
        }
        Some(loaded.config)
    }
}

/// Cancels the node's token on SIGTERM or SIGINT; SIGHUP reloads what can be reloaded.
pub async fn watch_signals(node: Arc<Node>, reload: Reload) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "Shutting down"); break; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "Shutting down"); break; }
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "Reloading");
                let config = reload.apply(&node.config);
                let plugins = node.plugins.clone();
                tokio::task::spawn_blocking(move || {
                    plugins.reload_and_log(config.as_ref(), crate::plugins::ReloadTrigger::Signal)
                });
            }
        }
    }
    node.begin_shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connects larger than std's backlog of 128 waits in the accept queue,
    /// completed by the kernel, while nothing accepts: none is dropped to a SYN retry (1 s).
    #[tokio::test]
    async fn a_burst_of_connects_waits_in_the_accept_queue() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4_096);
        let burst = somaxconn.min(LISTEN_BACKLOG as usize).min(1_000);
        assert!(
            burst > 128,
            "net.core.somaxconn is {somaxconn}: too small for this test"
        );
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..burst).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures_util::future::join_all(connects).await;
        let completed = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(completed, burst, "connects dropped from the accept queue");
        // Accepted sockets come with TCP_NODELAY (the connection code does not set it).
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
