//! Prometheus metrics. Names follow Prometheus conventions (units in names, `_total` on
//! counters) and every label set is bounded: never a channel or a user as a label.
//! Label children are resolved once here, so recording on the hot path is an atomic add.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::CloseCode;

/// Client frame types, as counted (`other` for anything unparseable).
pub const FRAME_TYPES: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "presence",
    "refresh",
    "ping",
    "other",
];

/// Rate limits, as labelled in `hookwire_rate_limited_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    ConnectionFrames,
    /// A connection's subscribe and unsubscribe requests.
    ConnectionSubscribes,
    UserPublishes,
    ChannelPublishes,
    IpConnects,
    NodeConnections,
    UserConnections,
    IpConnections,
    /// Handshakes in progress on the node (`connections.max_handshakes`).
    NodeHandshakes,
    /// Handshakes in progress from one source IP (`connections.max_handshakes_per_ip`).
    IpHandshakes,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectionFrames => "connection_frames",
            Self::ConnectionSubscribes => "connection_subscribes",
            Self::UserPublishes => "user_publishes",
            Self::ChannelPublishes => "channel_publishes",
            Self::IpConnects => "ip_connects",
            Self::NodeConnections => "node_connections",
            Self::UserConnections => "user_connections",
            Self::IpConnections => "ip_connections",
            Self::NodeHandshakes => "node_handshakes",
            Self::IpHandshakes => "ip_handshakes",
        }
    }
}

/// Where an accepted publication came from: the `source` label of
/// `hookwire_publications_total` (a closed set, so nothing is counted under a wrong label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicationSource {
    Client = 0,
    Api = 1,
    /// Emitted by a plugin beside the publication it was handling.
    Plugin = 2,
    /// NATS ingress (`<prefix>.api.publish`).
    Nats = 3,
}

/// Why a history stream was evicted: the `reason` label of
/// `hookwire_history_evictions_total` (`history.max_streams` or `history.max_bytes`).
pub const EVICTION_REASONS: [&str; 2] = ["streams", "bytes"];

impl PublicationSource {
    pub const ALL: [Self; 4] = [Self::Client, Self::Api, Self::Plugin, Self::Nats];

    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Api => "api",
            Self::Plugin => "plugin",
            Self::Nats => "nats",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_total: IntCounterVec,
    /// Connections parked now: idle, holding no task (see `session::park`).
    pub connections_parked: IntGauge,
    pub connection_duration: Histogram,
    frames_received: IntCounterVec,
    frames_sent: IntCounterVec,
    publications: IntCounterVec,
    /// Children resolved once, for the per-frame and per-publication paths.
    received_by_type: Vec<IntCounter>,
    published_by_source: [IntCounter; 4],
    messages_sent: IntCounter,
    published_sent: IntCounter,
    pub deliveries: IntCounter,
    pub publish_latency: Histogram,
    disconnects: IntCounterVec,
    rate_limited: IntCounterVec,
    auth_failures: IntCounterVec,
    pub slow_consumers: IntCounter,
    pub join_leave_skipped: IntCounter,
    dedup_evictions: IntCounter,
    pub plugin_audit_dropped: IntCounter,
    pub history_streams: IntGauge,
    pub history_publications: IntGauge,
    pub history_bytes: IntGauge,
    /// Children of `hookwire_history_evictions_total`, in `EVICTION_REASONS` order.
    history_evictions: [IntCounter; 2],
    pub outbound_queue_frames: IntGauge,
    pub outbound_queue_frames_max: IntGauge,
    /// `state` `running` or `waiting` (for a slot of its IP).
    pub handshakes: IntGaugeVec,
    pub api_requests: IntCounterVec,
    plugin_calls: IntCounterVec,
    plugin_errors: IntCounterVec,
    plugin_seconds: HistogramVec,
    plugin_shadow: IntCounterVec,
    plugin_loads: IntCounterVec,
    plugin_cache_rejected: IntCounterVec,
    plugin_overloaded: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("hookwire")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Long on purpose: one declaration per metric (name, help, labels) in one list, so
    // every metric the broker exports reads in one place; each is one statement.
    /// Registers a collector of another module (the cluster link's metrics).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// Registers a collector whose name comes from outside (a plugin's metric): a
    /// clash is an error to report, not a bug.
    pub fn try_register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), String> {
        self.registry
            .register(collector)
            .map_err(|e| format!("cannot register the metric: {e}"))
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let frames_received = IntCounterVec::new(
            opts("frames_received_total", "Client frames received, by type."),
            &["type"],
        )
        .expect("valid metric");
        let frames_sent = IntCounterVec::new(
            opts("frames_sent_total", "Server frames queued, by type."),
            &["type"],
        )
        .expect("valid metric");
        let publications = IntCounterVec::new(
            opts(
                "publications_total",
                "Publications accepted, by source (client, api, plugin: emitted by a plugin, nats: NATS ingress).",
            ),
            &["source"],
        )
        .expect("valid metric");
        // Resolve the bounded label sets once: every series shows from the start, and
        // recording on the per-frame and per-publication paths is a plain atomic add.
        let received_by_type = FRAME_TYPES
            .iter()
            .map(|t| frames_received.with_label_values(&[t]))
            .collect();
        let published_by_source =
            PublicationSource::ALL.map(|s| publications.with_label_values(&[s.label()]));
        let messages_sent = frames_sent.with_label_values(&["message"]);
        let published_sent = frames_sent.with_label_values(&["published"]);
        let history_evictions = IntCounterVec::new(
            opts(
                "history_evictions_total",
                "History streams evicted by a node cap, by reason (streams, bytes).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let m = Self {
            connections: IntGaugeVec::new(opts("connections", "Client connections open now."), &["transport"])
                .expect("valid metric"),
            connections_total: IntCounterVec::new(
                opts("connections_total", "Client connections accepted."),
                &["transport"],
            )
            .expect("valid metric"),
            connections_parked: IntGauge::with_opts(opts(
                "connections_parked",
                "Client connections parked now: idle, holding no task until the socket or their queue wakes them.",
            ))
            .expect("valid metric"),
            connection_duration: Histogram::with_opts(
                HistogramOpts::new("connection_duration_seconds", "How long client connections lasted.")
                    .namespace("hookwire")
                    .buckets(vec![1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0]),
            )
            .expect("valid metric"),
            frames_received,
            frames_sent,
            publications,
            received_by_type,
            published_by_source,
            messages_sent,
            published_sent,
            deliveries: IntCounter::with_opts(opts(
                "deliveries_total",
                "Publications queued for a local subscriber.",
            ))
            .expect("valid metric"),
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "publish_latency_seconds",
                    "From a publication's acceptance until its frame is written to the socket of the last local subscriber.",
                )
                .namespace("hookwire")
                .buckets(prometheus::exponential_buckets(0.000_01, 4.0, 10).expect("valid buckets")),
            )
            .expect("valid metric"),
            disconnects: IntCounterVec::new(
                opts("disconnects_total", "Server-initiated disconnects, by close code."),
                &["code"],
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                opts("rate_limited_total", "Requests or connections refused by a limit, by limit."),
                &["limit"],
            )
            .expect("valid metric"),
            auth_failures: IntCounterVec::new(
                opts("auth_failures_total", "Refused tokens, by reason."),
                &["reason"],
            )
            .expect("valid metric"),
            join_leave_skipped: IntCounter::with_opts(opts(
                "join_leave_skipped_total",
                "join and leave pushes skipped because a channel passed rate_limits.channel_join_leave_per_sec.",
            ))
            .expect("valid metric"),
            slow_consumers: IntCounter::with_opts(opts(
                "slow_consumer_disconnects_total",
                "Connections cut off because their outbound queue overflowed.",
            ))
            .expect("valid metric"),
            dedup_evictions: IntCounter::with_opts(opts(
                "dedup_evictions_total",
                "Idempotency keys forgotten before their window ended, to stay under limits.dedup_max_keys.",
            ))
            .expect("valid metric"),
            plugin_audit_dropped: IntCounter::with_opts(opts(
                "plugin_audit_dropped_total",
                "Plugin audit records dropped: over the audit rate or with the audit file's queue full.",
            ))
            .expect("valid metric"),
            history_streams: IntGauge::with_opts(opts("history_streams", "Channel streams kept in memory."))
                .expect("valid metric"),
            history_publications: IntGauge::with_opts(opts(
                "history_publications",
                "Publications kept in history.",
            ))
            .expect("valid metric"),
            history_bytes: IntGauge::with_opts(opts("history_bytes", "Bytes of publications kept in history."))
                .expect("valid metric"),
            history_evictions: EVICTION_REASONS.map(|r| history_evictions.with_label_values(&[r])),
            outbound_queue_frames: IntGauge::with_opts(opts(
                "outbound_queue_frames",
                "Frames waiting in all outbound queues (sampled).",
            ))
            .expect("valid metric"),
            outbound_queue_frames_max: IntGauge::with_opts(opts(
                "outbound_queue_frames_max",
                "The longest outbound queue (sampled).",
            ))
            .expect("valid metric"),
            handshakes: IntGaugeVec::new(
                opts(
                    "handshakes",
                    "Sockets whose upgrade and connect are not done: running, or waiting for a handshake slot of their IP (sampled).",
                ),
                &["state"],
            )
            .expect("valid metric"),
            api_requests: IntCounterVec::new(
                opts("api_requests_total", "Server API requests, by route and status class."),
                &["route", "status"],
            )
            .expect("valid metric"),
            plugin_calls: IntCounterVec::new(
                opts(
                    "plugin_calls_total",
                    "Plugin hook calls, by plugin, version, role (live, canary, shadow) and hook.",
                ),
                &["plugin", "version", "role", "hook"],
            )
            .expect("valid metric"),
            plugin_errors: IntCounterVec::new(
                opts(
                    "plugin_errors_total",
                    "Failed plugin hook calls, by plugin, version, role and kind (trap, timeout, memory, output).",
                ),
                &["plugin", "version", "role", "kind"],
            )
            .expect("valid metric"),
            plugin_seconds: HistogramVec::new(
                HistogramOpts::new("plugin_hook_seconds", "Time of one plugin hook call.")
                    .namespace("hookwire")
                    .buckets(vec![
                        1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2,
                    ]),
                &["plugin", "version", "role", "hook"],
            )
            .expect("valid metric"),
            plugin_shadow: IntCounterVec::new(
                opts(
                    "plugin_shadow_total",
                    "A shadow version's decisions compared with the live version's, by plugin and outcome (agree, or live→shadow such as allowed→refused).",
                ),
                &["plugin", "outcome"],
            )
            .expect("valid metric"),
            plugin_loads: IntCounterVec::new(
                opts("plugin_loads_total", "Plugin module loads, by result (ok, failed)."),
                &["result"],
            )
            .expect("valid metric"),
            plugin_cache_rejected: IntCounterVec::new(
                opts(
                    "plugin_cache_rejected_total",
                    "Compile-cache entries not used, by reason (untagged, bad_tag, not_a_file, incompatible); each was recompiled and replaced.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            plugin_overloaded: IntCounterVec::new(
                opts(
                    "plugin_overloaded_total",
                    "Hook calls refused because the plugin threads' queue was full, by hook.",
                ),
                &["hook"],
            )
            .expect("valid metric"),
            registry,
        };
        let r = &m.registry;
        let register =
            |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("unique metric names");
        register(Box::new(m.connections.clone()));
        register(Box::new(m.connections_total.clone()));
        register(Box::new(m.connections_parked.clone()));
        register(Box::new(m.connection_duration.clone()));
        register(Box::new(m.frames_received.clone()));
        register(Box::new(m.frames_sent.clone()));
        register(Box::new(m.publications.clone()));
        register(Box::new(m.deliveries.clone()));
        register(Box::new(m.publish_latency.clone()));
        register(Box::new(m.disconnects.clone()));
        register(Box::new(m.rate_limited.clone()));
        register(Box::new(m.auth_failures.clone()));
        register(Box::new(m.slow_consumers.clone()));
        register(Box::new(m.join_leave_skipped.clone()));
        register(Box::new(m.dedup_evictions.clone()));
        register(Box::new(m.plugin_audit_dropped.clone()));
        register(Box::new(m.history_streams.clone()));
        register(Box::new(m.history_publications.clone()));
        register(Box::new(m.history_bytes.clone()));
        register(Box::new(history_evictions));
        register(Box::new(m.outbound_queue_frames.clone()));
        register(Box::new(m.outbound_queue_frames_max.clone()));
        register(Box::new(m.handshakes.clone()));
        register(Box::new(m.api_requests.clone()));
        register(Box::new(m.plugin_calls.clone()));
        register(Box::new(m.plugin_errors.clone()));
        register(Box::new(m.plugin_seconds.clone()));
        register(Box::new(m.plugin_shadow.clone()));
        register(Box::new(m.plugin_loads.clone()));
        register(Box::new(m.plugin_cache_rejected.clone()));
        register(Box::new(m.plugin_overloaded.clone()));
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// The call counter of one plugin version's hook: plugin, version, role, hook
    /// (label values come from the config and the loaded modules, so the set is
    /// bounded).
    pub fn plugin_calls(&self, labels: [&str; 4]) -> IntCounter {
        self.plugin_calls.with_label_values(&labels)
    }

    /// Hook time of one plugin version's hook (labels as for [`Metrics::plugin_calls`]).
    pub fn plugin_seconds(&self, labels: [&str; 4]) -> Histogram {
        self.plugin_seconds.with_label_values(&labels)
    }

    /// A failed call: plugin, version, role, kind.
    pub fn plugin_error(&self, labels: [&str; 4]) {
        self.plugin_errors.with_label_values(&labels).inc();
    }

    /// A shadow's decision compared with the live version's: plugin, `agree` or the
    /// kind of difference (`allowed→refused`...).
    pub fn plugin_shadow(&self, plugin: &str, outcome: &str) {
        self.plugin_shadow
            .with_label_values(&[plugin, outcome])
            .inc();
    }

    pub fn plugin_load(&self, result: &str) {
        self.plugin_loads.with_label_values(&[result]).inc();
    }

    /// A compile-cache entry was rejected (`reason`: one of a closed set).
    pub fn plugin_cache_rejected(&self, reason: &str) {
        self.plugin_cache_rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// A hook call found the plugin threads' queue full (`hook`: one of the four).
    pub fn plugin_overloaded(&self, hook: &str) {
        self.plugin_overloaded.with_label_values(&[hook]).inc();
    }

    /// Records an accepted publication queued for `delivered` local subscribers.
    pub fn publication(&self, source: PublicationSource, delivered: u64) {
        self.published_by_source[source as usize].inc();
        self.delivered(delivered);
    }

    /// Deliveries of a publication accepted elsewhere (another node of a cluster): counted
    /// where they happen, as `publication` counts them on the accepting node.
    pub fn delivered(&self, n: u64) {
        self.deliveries.inc_by(n);
        self.messages_sent.inc_by(n);
    }

    /// Samples the history gauges and counts the evictions a sweep reports.
    pub fn history_swept(&self, stats: &crate::history::SweepStats) {
        self.history_streams.set(stats.streams as i64);
        self.history_publications.set(stats.publications as i64);
        self.history_bytes.set(stats.bytes as i64);
        self.history_evictions[0].inc_by(stats.evicted_for_streams);
        self.history_evictions[1].inc_by(stats.evicted_for_bytes);
    }

    pub fn frame_received(&self, kind: &str) {
        let i = FRAME_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(FRAME_TYPES.len() - 1);
        self.received_by_type[i].inc();
    }

    /// A `published` reply (one per publication: its counter resolved once, like
    /// `message`'s).
    pub fn published_sent(&self) {
        self.published_sent.inc();
    }

    /// `kind` must be one of the protocol's server frame types (a bounded set).
    pub fn frames_sent(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.frames_sent.with_label_values(&[kind]).inc_by(n);
        }
    }

    pub fn disconnect(&self, code: CloseCode) {
        self.disconnects.with_label_values(&[code.label()]).inc();
        if code == CloseCode::SlowConsumer {
            self.slow_consumers.inc();
        }
    }

    pub fn dedup_evicted(&self, keys: u64) {
        self.dedup_evictions.inc_by(keys);
    }

    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited.with_label_values(&[limit.label()]).inc();
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}
