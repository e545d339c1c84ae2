//! The audit trail: every refusal, data change, reroute and emitted publication a
//! plugin makes, to the `audit` tracing target and, when configured, an append-only
//! JSONL file written by its own thread (a slow disk never stalls a publication).
//!
//! Bounded: at most [`RECORDS_PER_SEC`] records a second (burst [`RECORDS_BURST`]) are
//! logged and written, and the file's queue holds at most [`QUEUE_RECORDS`]; what does not
//! fit is counted in `hookwire_plugin_audit_dropped_total`, never queued without bound.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::IntCounter;
use serde::Serialize;

/// Records waiting for the audit file's writer thread.
pub const QUEUE_RECORDS: usize = 10_000;
/// Records audited per second, and the burst above it.
pub const RECORDS_PER_SEC: u32 = 1_000;
pub const RECORDS_BURST: u32 = 5_000;

/// One audited decision.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Unix milliseconds.
    pub time: u64,
    pub plugin: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub hook: &'static str,
    pub channel: Option<&'a str>,
    pub user: Option<&'a str>,
    pub client: Option<&'a str>,
    /// `refused`, `modified` (data replaced), `rerouted`, `emitted`, `failed`.
    pub decision: &'static str,
    pub reason: &'a str,
}

pub struct Audit {
    file: Option<mpsc::SyncSender<String>>,
    rate: DefaultDirectRateLimiter,
    dropped: IntCounter,
}

impl Audit {
    pub fn tracing_only(dropped: IntCounter) -> Self {
        Self {
            file: None,
            rate: limiter(),
            dropped,
        }
    }

    /// Appends to `path` (created if missing); lines are flushed whenever the writer
    /// catches up.
    pub fn to_file(path: &Path, dropped: IntCounter) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE_RECORDS);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("plugin-audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(line) = rx.recv() {
                    let mut result = out.write_all(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        result = result.and_then(|()| out.write_all(more.as_bytes()));
                    }
                    if let Err(e) = result.and_then(|()| out.flush()) {
                        tracing::error!(path = %shown, error = %e, "Cannot write the audit file");
                    }
                }
            })?;
        Ok(Self {
            file: Some(tx),
            rate: limiter(),
            dropped,
        })
    }

    /// Logs and queues one record, or counts it as dropped (over the rate, queue full).
    pub fn record(&self, r: &Record<'_>) {
        if self.rate.check().is_err() {
            self.dropped.inc();
            return;
        }
        tracing::info!(
            target: "audit",
            plugin = r.plugin,
            version = r.version,
            sha256 = r.sha256,
            hook = r.hook,
            channel = r.channel.unwrap_or(""),
            user = r.user.unwrap_or(""),
            client = r.client.unwrap_or(""),
            decision = r.decision,
            reason = r.reason,
            "Plugin decision"
        );
        if let Some(tx) = &self.file {
            let mut line = serde_json::to_string(r).expect("an audit record serializes");
            line.push('\n');
            if tx.try_send(line).is_err() {
                self.dropped.inc();
            }
        }
    }
}

fn limiter() -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(RECORDS_PER_SEC).expect("a nonzero rate");
    let burst = NonZeroU32::new(RECORDS_BURST).expect("a nonzero burst");
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: 0,
            plugin: "p",
            version: "1",
            sha256: "s",
            hook: "publish",
            channel: None,
            user: None,
            client: None,
            decision: "refused",
            reason: "r",
        }
    }

    #[test]
    fn records_over_the_rate_are_dropped_and_counted() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let audit = Audit::tracing_only(dropped.clone());
        let n = u64::from(RECORDS_BURST) + 500;
        for _ in 0..n {
            audit.record(&record());
        }
        // The burst passes (plus what the rate refilled meanwhile); the rest is counted.
        assert!(
            dropped.get() > 0 && dropped.get() <= 500,
            "{}",
            dropped.get()
        );
    }
}
