//! The cluster link's metrics (`hookwire_cluster_*`), registered with the node's.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::Metrics;

pub struct ClusterMetrics {
    pub connected: IntGauge,
    pub nodes: IntGauge,
    pub links: IntGauge,
    pub publish_ack: Histogram,
    pub messages: IntCounterVec,
    pub errors: IntCounterVec,
    pub slow_consumers: IntCounter,
    pub resyncs: IntCounter,
    pub stream_reads: IntCounter,
    pub forced_recoveries: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("hookwire")
}

/// Makes a metric and registers it with the node's.
fn registered<C>(metrics: &Metrics, made: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let collector = made.expect("valid metric");
    metrics.register(Box::new(collector.clone()));
    collector
}

/// A counter with a label, every value shown from the start.
fn by(metrics: &Metrics, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let vec = registered(metrics, IntCounterVec::new(opts(name, help), &[label]));
    for value in values {
        vec.with_label_values(&[value]);
    }
    vec
}

impl ClusterMetrics {
    pub(super) fn new(metrics: &Metrics) -> Self {
        let gauge = |name, help| registered(metrics, IntGauge::with_opts(opts(name, help)));
        let counter = |name, help| registered(metrics, IntCounter::with_opts(opts(name, help)));
        let ack_opts = HistogramOpts::new(
            "cluster_publish_ack_seconds",
            "From handing a publication to JetStream to its acknowledgement.",
        )
        .namespace("hookwire")
        .buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
        ]);
        Self {
            connected: gauge(
                "cluster_connected",
                "1 while this node's NATS connections are up.",
            ),
            nodes: gauge(
                "cluster_nodes",
                "Nodes heard from within cluster.node_timeout_ms, this one included.",
            ),
            links: gauge(
                "cluster_channel_links",
                "Channels this node holds NATS interest for.",
            ),
            publish_ack: registered(metrics, Histogram::with_opts(ack_opts)),
            messages: by(
                metrics,
                "cluster_messages_total",
                "Messages to and from NATS, by direction (out: stored or published; in: received for local subscribers).",
                "direction",
                &["in", "out"],
            ),
            errors: by(
                metrics,
                "cluster_errors_total",
                "Cluster link failures, by kind (jetstream: a store or read failed; outbox: a cross-node copy was dropped, the queue full; decode: a message from NATS was not understood).",
                "kind",
                &["jetstream", "outbox", "decode"],
            ),
            slow_consumers: counter(
                "cluster_slow_consumers_total",
                "NATS slow-consumer events: messages NATS dropped for a channel subscription of this node.",
            ),
            resyncs: counter(
                "cluster_resyncs_total",
                "Channels read again from their stream after a gap, a reconnect or a slow consumer.",
            ),
            stream_reads: counter(
                "cluster_stream_reads_total",
                "Reads of a channel from its JetStream stream (a link loading, or catching up): one per channel and node, however many clients recover.",
            ),
            forced_recoveries: counter(
                "cluster_forced_recoveries_total",
                "Local subscribers told to reconnect and recover (a gap that cannot be read again).",
            ),
        }
    }
}
