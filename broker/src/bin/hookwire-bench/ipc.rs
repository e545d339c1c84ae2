//! What the coordinator and its worker processes say to each other.
//!
//! One process cannot hold more than 20,000 sockets (the machine's hard `nofile` limit),
//! so clients live in worker processes: the bench re-executes itself as
//! `hookwire-bench worker`. The coordinator writes one JSON line per message on the
//! worker's stdin (first a [`WorkerSpec`], then [`Command`]s) and the worker answers each
//! with one [`Event`] line on stdout. The secret travels on stdin, never on argv.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::stats::SparseHistogram;

/// Everything a worker needs to open its clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    /// Makes `sub` claims and user names unique per run.
    pub run_id: String,
    pub url: String,
    pub broker: SocketAddr,
    /// Publishers connect here instead (another node of a cluster).
    #[serde(default)]
    pub publish_url: Option<String>,
    pub secret: String,
    /// Local addresses clients bind to before connecting (127.0.0.x), so the ~28k
    /// ephemeral ports of one source address are not the cap.
    pub source_ips: Vec<Ipv4Addr>,
    /// Subscribers: `count` connections each subscribed to `channel`.
    pub subscribers: Vec<Group>,
    /// Publisher connections: one per entry.
    pub publishers: Vec<PublisherSpec>,
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    pub read_buffer: usize,
    /// Set: clients speak WebTransport to this URL, trusting the certificate with this
    /// SHA-256 (hex).
    #[serde(default)]
    pub webtransport: Option<(String, String)>,
    /// Global number of this worker's first client: spreads source addresses evenly.
    pub first_client: usize,
    /// `soak`: this worker runs the soak loop (see `soak_worker`) instead of the usual one.
    #[serde(default)]
    pub soak: Option<SoakRole>,
}

/// What a `soak` worker does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum SoakRole {
    /// Holds its subscribers, tracks their offsets, and churns them on command.
    Subscribers,
    /// One publisher connection per entry of `channels`, each publishing round robin
    /// over its list at `rate` publications/s with a `{"t":…,"text":"…"}` payload.
    Publisher {
        channels: Vec<Vec<String>>,
        rate: f64,
        window: usize,
        payload: usize,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    pub channel: String,
    pub count: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublisherSpec {
    pub channel: String,
    /// Messages per second for this publisher; 0 = as fast as `window` allows.
    pub rate: f64,
    /// Publishes sent and not yet answered (`published` or `error`), at most.
    pub window: usize,
    /// Size of the `data` JSON value in bytes (at least the timestamp's size).
    pub payload: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Every publisher publishes for `duration_ms`, then waits for its replies.
    Run { duration_ms: u64 },
    /// Every publisher publishes one message and waits for its reply.
    PublishOnce,
    /// Subscriber counters so far; `reset` zeroes them afterwards.
    Report { reset: bool },
    /// `soak`: the subscribers `[(cycle * n + k) % len]` (n = `fraction` of them)
    /// disconnect, stay away `offline_ms`, reconnect and resubscribe with `recover`.
    Churn {
        fraction: f64,
        cycle: u64,
        #[serde(default)]
        offline_ms: u64,
    },
    /// `soak`: final offset check against each channel's top (the publisher's last
    /// acknowledged offset), then the counters.
    SoakFinal { tops: BTreeMap<String, u64> },
    /// Close everything and exit.
    Exit,
}

/// Why clients could not connect, by class, with one example message per class.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failures {
    pub counts: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, String>,
}

impl Failures {
    pub fn add(&mut self, class: &str, message: impl FnOnce() -> String) {
        *self.counts.entry(class.to_string()).or_default() += 1;
        if !self.samples.contains_key(class) {
            self.samples.insert(class.to_string(), message());
        }
    }

    pub fn merge(&mut self, other: &Failures) {
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.samples {
            self.samples.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// What the publishers of one worker did during a [`Command::Run`] or
/// [`Command::PublishOnce`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishTotals {
    pub sent: u64,
    /// Answered with `published`.
    pub acked: u64,
    /// Answered with `error`.
    pub errors: u64,
    /// Sent but not answered within the drain timeout.
    pub unanswered: u64,
    pub first_error: Option<String>,
    /// Times a publisher wanted to send but its window was full (the target rate was
    /// not reachable).
    pub window_full: u64,
    /// When sending started and stopped (µs since the epoch; 0 when nothing was sent).
    pub started_us: u64,
    pub stopped_us: u64,
    /// `PublishOnce`: when the (last) message was stamped.
    pub stamp_us: u64,
    /// Publisher connections that broke.
    pub broken: u64,
}

impl PublishTotals {
    pub fn merge(&mut self, o: &PublishTotals) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.errors += o.errors;
        self.unanswered += o.unanswered;
        self.window_full += o.window_full;
        self.broken += o.broken;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.started_us = min_nonzero(self.started_us, o.started_us);
        self.stopped_us = self.stopped_us.max(o.stopped_us);
        self.stamp_us = self.stamp_us.max(o.stamp_us);
    }
}

/// The smaller of two timestamps where 0 means "none".
pub fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// Subscriber counters of one worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecvReport {
    pub received: u64,
    pub other: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub latency: SparseHistogram,
    /// Fewest and most messages one of this worker's subscribers got.
    pub min_per_conn: u64,
    pub max_per_conn: u64,
    /// Subscribers whose connection ended, by close code (`"4009"`) or cause (`"eof"`).
    pub closed: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// All connection attempts finished.
    Ready {
        subscribers: usize,
        publishers: usize,
        failed: Failures,
        elapsed_ms: u64,
    },
    Published(PublishTotals),
    Report(RecvReport),
    /// `soak` publisher: totals and the highest acknowledged offset per channel.
    SoakPublished {
        totals: PublishTotals,
        tops: BTreeMap<String, u64>,
    },
    Churned(ChurnReport),
    SoakReport(SoakReport),
    /// The worker cannot go on (bad spec, runtime failure).
    Fatal {
        message: String,
    },
    Bye,
}

/// What one `Churn` did on one worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Clients told to disconnect and reconnect.
    pub churned: u64,
    /// Reconnected and resubscribed (`subscribed` received).
    pub reconnected: u64,
    /// Could not reconnect or resubscribe, by class.
    pub failed: Failures,
    /// `recovered: true` / `false` in the `subscribed` reply.
    pub recovered: u64,
    pub not_recovered: u64,
    /// Replies that said `more: true` (recovery paged with `history since`).
    pub paged: u64,
    /// Slowest disconnect-to-resubscribed time, ms.
    pub max_ms: u64,
}

impl ChurnReport {
    pub fn merge(&mut self, o: &ChurnReport) {
        self.churned += o.churned;
        self.reconnected += o.reconnected;
        self.failed.merge(&o.failed);
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.paged += o.paged;
        self.max_ms = self.max_ms.max(o.max_ms);
    }
}

/// A `soak` worker's subscribers at the end of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SoakReport {
    /// Subscribers still connected at the end.
    pub alive: u64,
    /// Publications that should have reached the live subscribers: for each,
    /// its channel's top minus the offset it first subscribed at.
    pub expected: u64,
    /// Publications received in sequence (live and recovered), duplicates excluded.
    pub received: u64,
    pub duplicates: u64,
    /// Offsets never received (gaps, plus the tail below the channel's top).
    pub missing: u64,
    /// Recoveries: attempted, and at the end of their episode (the next churn or the end
    /// of the run) exact (no gap, no duplicate, `recovered: true`) or not.
    pub recoveries: u64,
    pub recoveries_exact: u64,
    pub recoveries_not_exact: u64,
    /// Connections that ended without being churned, by close code or cause.
    pub unexpected_closes: BTreeMap<String, u64>,
    /// Live (not recovered) message latency.
    pub latency: SparseHistogram,
}

impl SoakReport {
    pub fn merge(&mut self, o: &SoakReport) {
        self.alive += o.alive;
        self.expected += o.expected;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.missing += o.missing;
        self.recoveries += o.recoveries;
        self.recoveries_exact += o.recoveries_exact;
        self.recoveries_not_exact += o.recoveries_not_exact;
        for (k, v) in &o.unexpected_closes {
            *self.unexpected_closes.entry(k.clone()).or_default() += v;
        }
    }
}
