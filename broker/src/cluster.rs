//! A cluster of nodes joined through NATS (`[cluster]`).
//!
//! ```text
//! cluster          Cluster: the NATS link; Sequencer, Presence and Announce for the node
//!   config         [cluster], validated
//!   subjects       every NATS name (subjects, streams, the revocation bucket)
//!   wire           a publication as it travels between nodes
//!   metrics        hookwire_cluster_*
//!   links          per channel with local subscribers: its NATS subscription, its replica
//!                  of the stream (load, gap check, catch-up), delivery into the hub
//!   streams        a namespace's stream as links read it (open, read a subject, still stored?)
//!   gather         heartbeats, questions every node answers (presence, channels,
//!                  disconnect), control, revocations in a KV bucket, NATS ingress
//! ```
//!
//! The log: a namespace with history is a JetStream stream (`P_<ns>`, subjects
//! `P.h.<ns>.<channel>`, per-subject limits from `history_size`, `max_age` from
//! `history_ttl_secs`, idempotency keys as `Nats-Msg-Id` within the dedup window). A
//! publish is answered once the stream acknowledges it (the offset is its stream
//! sequence; the epoch names the stream's creation). The stream republishes each stored
//! message to `P.d.<ns>.<channel>` in stream order, with its sequence and the previous
//! sequence of the same channel, and every node with subscribers (this one too) delivers
//! it from there: once, in the stream's order, with gaps found and read again from the
//! stream. A namespace without history is delivered here at once and published to
//! `P.d.…` for the other nodes (the delivery connection is `no_echo`), at most once.
//!
//! Two NATS connections: `control` (JetStream, KV, questions, ingress) and `delivery`
//! (`no_echo`: channel subscriptions and core publishes), so a slow consumer's subscription
//! id names a channel.

pub mod config;
mod gather;
mod links;
mod metrics;
mod streams;
mod subjects;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::{ClusterConfig, Storage};
pub use metrics::ClusterMetrics;
use subjects::Subjects;

use crate::channel::{ChannelName, Namespace};
use crate::config::Config;
use crate::hub::{Announce, NewPublication};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{EncodedFrame, ErrorCode, ErrorReply, now_ms};
use crate::sequencer::{
    Acked, Control, Federation, Prepare, Presence, PresenceList, Sequencer, Sequencing,
};
use futures_util::future::BoxFuture;

/// Publications waiting for the appender (JetStream), and core messages waiting for the
/// outbox writer. Past these, a publish is answered `unavailable` (history) or the
/// cross-node copy is dropped and counted (no history).
const APPEND_QUEUE: usize = 65_536;
const OUTBOX_QUEUE: usize = 65_536;

/// Why the cluster link failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read cluster.credentials_file: {0}")]
    Credentials(std::io::Error),
    #[error("cannot connect to NATS at {urls:?}: {message}")]
    Connect { urls: Vec<String>, message: String },
}

/// A publication for the appender.
struct Append {
    subject: String,
    message_id: Option<String>,
    payload: Bytes,
    acked: oneshot::Sender<Result<jetstream::context::PublishAckFuture, String>>,
}

/// A core message for the outbox writer.
struct Outgoing {
    subject: String,
    push: bool,
    payload: Bytes,
}

/// The NATS link of this node. See the module doc.
pub struct Cluster {
    config: ClusterConfig,
    subjects: Subjects,
    name: String,
    control: async_nats::Client,
    delivery: async_nats::Client,
    js: jetstream::Context,
    /// Epoch of each history namespace's stream, once it is set up.
    epochs: Mutex<HashMap<String, Arc<str>>>,
    /// Set once every stream and the revocation bucket are there.
    set_up: AtomicBool,
    /// A set-up is running (at start, and again after each reconnect).
    setting_up: AtomicBool,
    links: links::Links,
    appends: mpsc::Sender<Append>,
    outbox: mpsc::Sender<Outgoing>,
    /// Queues handed to the tasks [`Cluster::start`] runs.
    queues: Mutex<Option<Queues>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<async_nats::Event>>>,
    gather: gather::Gather,
    node: OnceLock<Weak<Node>>,
    this: OnceLock<Weak<Cluster>>,
    pub metrics: ClusterMetrics,
    stop: CancellationToken,
}

struct Queues {
    appends: mpsc::Receiver<Append>,
    outbox: mpsc::Receiver<Outgoing>,
}

impl Cluster {
    /// Connects to NATS (in the background when it is not up yet: the node starts and
    /// `/ready` says why it is not ready).
    pub async fn connect(
        config: &Config,
        node_name: &str,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, ClusterError> {
        let c = config.cluster.clone();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let control = connect_one(&c, node_name, "control", None).await?;
        let delivery = connect_one(&c, node_name, "delivery", Some(event_tx)).await?;
        let (appends, appends_rx) = mpsc::channel(APPEND_QUEUE);
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
        let subjects = Subjects::new(&c.subject_prefix);
        Ok(Arc::new(Self {
            js: jetstream::new(control.clone()),
            links: links::Links::default(),
            gather: gather::Gather::new(node_name),
            subjects,
            name: node_name.to_string(),
            control,
            delivery,
            epochs: Mutex::new(HashMap::new()),
            set_up: AtomicBool::new(false),
            setting_up: AtomicBool::new(false),
            appends,
            outbox,
            queues: Mutex::new(Some(Queues {
                appends: appends_rx,
                outbox: outbox_rx,
            })),
            events: Mutex::new(Some(event_rx)),
            node: OnceLock::new(),
            this: OnceLock::new(),
            metrics: ClusterMetrics::new(metrics),
            stop: CancellationToken::new(),
            config: c,
        }))
    }

    /// Starts the link's tasks for `node` (whose log, presence and hub announcements
    /// are this cluster). Stopped by [`Cluster::stop`].
    pub fn start(self: &Arc<Self>, node: &Arc<Node>) {
        self.node
            .set(Arc::downgrade(node))
            .expect("a cluster link starts once");
        let _ = self.this.set(Arc::downgrade(self));
        let queues = self.queues.lock().take().expect("started once");
        let events = self.events.lock().take().expect("started once");
        tokio::spawn(self.clone().append_loop(queues.appends));
        tokio::spawn(self.clone().outbox_loop(queues.outbox));
        tokio::spawn(self.clone().event_loop(events));
        tokio::spawn(self.clone().setup_loop());
        gather::start(self);
    }

    /// Stops the link: channel subscriptions end, pending acknowledgements are given up to
    /// `publish_timeout_ms` by their waiters, then both connections are flushed.
    pub async fn stop(&self) {
        self.stop.cancel();
        let flush = async {
            let _ = self.delivery.flush().await;
            let _ = self.control.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    fn this(&self) -> Option<Arc<Cluster>> {
        self.this.get().and_then(Weak::upgrade)
    }

    /// What this cluster gives the node it links (`Node::with_plugins`).
    pub fn federation(self: &Arc<Self>) -> Federation {
        Federation {
            name: self.name.clone(),
            log: self.clone(),
            presence: self.clone(),
            announce: self.clone(),
            control: self.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn connected(&self) -> bool {
        use async_nats::connection::State;
        matches!(self.control.connection_state(), State::Connected)
            && matches!(self.delivery.connection_state(), State::Connected)
    }

    /// Why this node is not ready, `None` when it is.
    fn not_ready(&self) -> Option<String> {
        if !self.connected() {
            return Some(format!(
                "not connected to NATS ({}); local clients are served, cross-node delivery resumes once it is back",
                self.config.nats_url.join(", ")
            ));
        }
        if !self.set_up.load(Ordering::Acquire) {
            return Some("setting up the JetStream streams".into());
        }
        None
    }

    /// Waits until NATS has handled everything sent before on the delivery connection
    /// (a `flush` only writes the socket): a request to a subject nobody subscribes to
    /// comes back "no responders" from the server itself, after what came before it.
    /// Not while disconnected (the client sends its subscriptions again once back).
    async fn delivery_barrier(&self) {
        if !matches!(
            self.delivery.connection_state(),
            async_nats::connection::State::Connected
        ) {
            return;
        }
        let request = self.delivery.request(self.subjects.barrier(), Bytes::new());
        match tokio::time::timeout(self.timeout(), request).await {
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            // Something answers the barrier subject: that too came after the SUB.
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "NATS round trip failed"),
            Err(_) => tracing::debug!("NATS round trip timed out"),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.publish_timeout_ms)
    }

    /// The epoch of a history namespace's stream, once it is set up.
    fn epoch(&self, ns: &str) -> Option<Arc<str>> {
        self.epochs.lock().get(ns).cloned()
    }

    /// Makes (or updates) every history namespace's stream and the revocation bucket;
    /// retried until NATS answers.
    async fn setup_loop(self: Arc<Self>) {
        if self.setting_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let _done = scopeguard(&self.setting_up);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.setup().await {
                Ok(()) => {
                    self.set_up.store(true, Ordering::Release);
                    tracing::info!(streams = self.epochs.lock().len(), "Cluster streams set up");
                    return;
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&["jetstream"]).inc();
                    tracing::warn!(error = %e, "Cannot set up the JetStream streams yet; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn setup(&self) -> anyhow::Result<()> {
        let Some(node) = self.node() else {
            return Ok(());
        };
        let dedup_window = Duration::from_millis(node.config.limits.dedup_window_ms);
        for (name, ns) in &node.config.namespaces {
            if ns.history_size == 0 {
                continue;
            }
            let config = stream::Config {
                name: self.subjects.stream(name),
                subjects: vec![self.subjects.stored_all(name)],
                max_messages_per_subject: ns.history_size as i64,
                max_age: Duration::from_secs(ns.history_ttl_secs),
                duplicate_window: dedup_window.min(Duration::from_secs(ns.history_ttl_secs.max(1))),
                storage: self.storage(),
                num_replicas: self.config.replicas as usize,
                republish: Some(stream::Republish {
                    source: self.subjects.stored_all(name),
                    destination: self.subjects.delivered_all(name),
                    headers_only: false,
                }),
                ..Default::default()
            };
            let info = self.js.create_or_update_stream(config).await?;
            let epoch = epoch_of(&info);
            self.epochs.lock().insert(name.clone(), epoch);
        }
        gather::setup_revocations(self).await?;
        Ok(())
    }

    fn storage(&self) -> stream::StorageType {
        match self.config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }

    /// Sends publications to JetStream one by one, in the order they were accepted (so
    /// one connection's publications to a channel are stored in its order); the
    /// acknowledgements are awaited by whoever published.
    async fn append_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Append>) {
        loop {
            let job = tokio::select! {
                _ = self.stop.cancelled() => return,
                job = rx.recv() => match job { Some(j) => j, None => return },
            };
            let mut headers = HeaderMap::new();
            if let Some(id) = &job.message_id {
                headers.insert(NATS_MESSAGE_ID, id.as_str());
            }
            let sent = self
                .js
                .publish_with_headers(job.subject, headers, job.payload)
                .await
                .map_err(|e| e.to_string());
            self.metrics.messages.with_label_values(&["out"]).inc();
            let _ = job.acked.send(sent);
        }
    }

    /// Writes core messages (namespaces without history, `join`/`leave`) in order.
    async fn outbox_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Outgoing>) {
        loop {
            let out = tokio::select! {
                _ = self.stop.cancelled() => return,
                out = rx.recv() => match out { Some(o) => o, None => return },
            };
            let sent = if out.push {
                let mut headers = HeaderMap::new();
                headers.insert(wire::PUSH_HEADER, "1");
                self.delivery
                    .publish_with_headers(out.subject, headers, out.payload)
                    .await
            } else {
                self.delivery.publish(out.subject, out.payload).await
            };
            match sent {
                Ok(()) => self.metrics.messages.with_label_values(&["out"]).inc(),
                Err(_) => self.metrics.errors.with_label_values(&["outbox"]).inc(),
            }
        }
    }

    fn send_core(&self, out: Outgoing) {
        if self.outbox.try_send(out).is_err() {
            self.metrics.errors.with_label_values(&["outbox"]).inc();
        }
    }

    /// Connection events: state, reconnects (every channel is read again from its
    /// stream), slow consumers.
    async fn event_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<async_nats::Event>) {
        self.metrics.connected.set(i64::from(self.connected()));
        // NATS reports each dropped message: one warning a second says how many.
        let mut dropped_since_warning = 0u64;
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => return,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            match event {
                async_nats::Event::Connected => {
                    self.metrics.connected.set(i64::from(self.connected()));
                    tracing::info!("Connected to NATS; reading every linked channel again");
                    // A NATS that lost its store has no streams: make them again (a
                    // stream made anew has a new epoch, which its links notice).
                    tokio::spawn(self.clone().setup_loop());
                    self.links.resync_all();
                }
                async_nats::Event::Disconnected => {
                    self.metrics.connected.set(0);
                    tracing::warn!(
                        "Disconnected from NATS; serving local clients, publishes to history namespaces answer unavailable"
                    );
                }
                async_nats::Event::SlowConsumer(sid) => {
                    self.metrics.slow_consumers.inc();
                    dropped_since_warning += 1;
                    let channel = self.links.on_slow_consumer(sid);
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_warning = Some(std::time::Instant::now());
                        tracing::warn!(
                            dropped = dropped_since_warning,
                            channel = ?channel.as_ref().map(|c| c.as_str()),
                            "NATS slow consumer: messages were dropped for this node (cluster.subscription_capacity); reading the channel again from its stream"
                        );
                        dropped_since_warning = 0;
                    }
                }
                other => tracing::debug!(event = %other, "NATS event"),
            }
        }
    }
}

/// Clears `flag` when dropped.
fn scopeguard(flag: &AtomicBool) -> impl Drop + '_ {
    struct Clear<'a>(&'a AtomicBool);
    impl Drop for Clear<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    Clear(flag)
}

/// The epoch of a stream: its creation time (a recreated stream has another).
fn epoch_of(info: &stream::Info) -> Arc<str> {
    let nanos = info.created.unix_timestamp_nanos();
    Arc::from(format!("js{nanos:x}"))
}

async fn connect_one(
    c: &ClusterConfig,
    node_name: &str,
    role: &str,
    events: Option<mpsc::UnboundedSender<async_nats::Event>>,
) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("hookwire {node_name} {role}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 100).clamp(50, 1_000)))
        .require_tls(c.require_tls);
    if let Some(tx) = events {
        options = options
            .no_echo()
            .subscription_capacity(c.subscription_capacity as usize)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
    }
    if !c.credentials_file.is_empty() {
        options = options
            .credentials_file(&c.credentials_file)
            .await
            .map_err(ClusterError::Credentials)?;
    }
    if let Ok(token) = std::env::var("HOOKWIRE_NATS_TOKEN") {
        options = options.token(token);
    }
    if !c.user.is_empty() {
        let password = std::env::var("HOOKWIRE_NATS_PASSWORD").unwrap_or_default();
        options = options.user_and_password(c.user.clone(), password);
    }
    if !c.tls_ca_file.is_empty() {
        options = options.add_root_certificates(c.tls_ca_file.clone().into());
    }
    if !c.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            c.tls_cert_file.clone().into(),
            c.tls_key_file.clone().into(),
        );
    }
    options
        .connect(c.nats_url.clone())
        .await
        .map_err(|e| ClusterError::Connect {
            urls: c.nats_url.clone(),
            message: e.to_string(),
        })
}

fn unavailable(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, message)
}

impl Sequencer for Cluster {
    fn keeps_keys(&self, ns: &Namespace) -> bool {
        ns.keeps_history()
    }

    fn publish(
        &self,
        ns: &Arc<Namespace>,
        publication: NewPublication<'_>,
        message_id: Option<&str>,
    ) -> Sequencing {
        let ts = now_ms();
        let payload = wire::encode(&publication, ts);
        let channel = publication.channel;
        if !ns.keeps_history() {
            // Delivered here now; the other nodes get the copy (at most once).
            let subject = self.subjects.delivered(&ns.name, channel.as_str());
            let published = match self.node() {
                Some(node) => node.hub.publish(ns, publication),
                None => crate::hub::Published::repeat(0),
            };
            self.send_core(Outgoing {
                subject,
                push: false,
                payload,
            });
            return Sequencing::Done(published);
        }
        if let Some(reason) = self.not_ready() {
            let err = unavailable(format!(
                "this publication cannot be stored now: {reason}; retry (with the same key, it is stored once)"
            ));
            return Sequencing::Later(Box::pin(async move { Err(err) }));
        }
        let (acked, ack) = oneshot::channel();
        let job = Append {
            subject: self.subjects.stored(&ns.name, channel.as_str()),
            message_id: message_id.map(str::to_string),
            payload,
            acked,
        };
        if self.appends.try_send(job).is_err() {
            let err = unavailable(
                "this node has too many publications waiting for JetStream; retry shortly",
            );
            return Sequencing::Later(Box::pin(async move { Err(err) }));
        }
        let timeout = self.timeout();
        let histogram = self.metrics.publish_ack.clone();
        let errors = self.metrics.errors.with_label_values(&["jetstream"]);
        Sequencing::Later(Box::pin(async move {
            let started = std::time::Instant::now();
            let acked = tokio::time::timeout(timeout, async {
                let future = ack
                    .await
                    .map_err(|_| "the cluster link stopped".to_string())??;
                future.await.map_err(|e| e.to_string())
            })
            .await;
            match acked {
                Ok(Ok(ack)) => {
                    histogram.observe(started.elapsed().as_secs_f64());
                    Ok(Acked {
                        offset: ack.sequence,
                        duplicate: ack.duplicate,
                    })
                }
                Ok(Err(e)) => {
                    errors.inc();
                    Err(unavailable(format!(
                        "JetStream did not store this publication ({e}); retry (with the same key, it is stored once)"
                    )))
                }
                Err(_) => {
                    errors.inc();
                    Err(unavailable(format!(
                        "JetStream did not confirm this publication within {} ms; retry with the same key (it is stored once)",
                        timeout.as_millis()
                    )))
                }
            }
        }))
    }

    fn prepare(&self, ns: &Arc<Namespace>, channel: &ChannelName) -> Prepare {
        let node = self.node()?;
        self.links.prepare(self, &node, ns, channel)
    }
}

impl Control for Cluster {
    fn not_ready(&self) -> Option<String> {
        Cluster::not_ready(self)
    }

    fn channels(&self) -> BoxFuture<'_, Vec<(String, usize)>> {
        Box::pin(gather::channels(self))
    }

    fn disconnect<'a>(&'a self, user: &'a str, reason: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(gather::disconnect(self, user, reason))
    }

    /// Stores a revocation in the cluster's bucket: every node applies it, now and after
    /// a restart.
    fn revoke<'a>(
        &'a self,
        user: &'a str,
        revoked_at: u64,
        until: u64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(gather::revoke(self, user, revoked_at, until))
    }

    fn unrevoke<'a>(&'a self, user: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(gather::unrevoke(self, user))
    }
}

impl Presence for Cluster {
    fn list(&self, channel: &ChannelName) -> PresenceList {
        gather::presence(self, channel)
    }
}

impl Announce for Cluster {
    fn announce(&self, channel: &ChannelName, frame: &EncodedFrame) {
        let Some(node) = self.node() else {
            return;
        };
        let Ok((_, ns)) = crate::access::resolve(&node.namespaces, channel.as_str()) else {
            return;
        };
        self.send_core(Outgoing {
            subject: self.subjects.delivered(&ns.name, channel.as_str()),
            push: true,
            payload: frame.bytes(),
        });
    }
}
