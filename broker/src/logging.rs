//! Log set-up: readable text by default, JSON lines with `--log-format json`. The level
//! filter can be swapped at run time (SIGHUP reloads `log.level`).
//!
//! Strings a client chooses (origins) are logged as `&str` fields, which both outputs
//! escape; where an attacker can repeat them at will they are truncated ([`untrusted`])
//! and rate-limited ([`Throttle`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`: the level filter and the output format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `hookwire=debug,info`, …
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    pub fn validate(&self, p: &mut Problems) {
        if EnvFilter::try_new(&self.level).is_err() {
            p.push(format!(
                "log.level = {:?}: must be a level (error, warn, info, debug, trace) or a tracing filter such as \"hookwire=debug,info\"",
                self.level
            ));
        }
    }
}

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = filter(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// The filter for a level: the plugin compiler's own chatter stays at `warn` unless the
/// level names it.
fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut filter = EnvFilter::try_new(level)?;
    for quiet in [
        "wasmtime",
        "cranelift_codegen",
        "cranelift_frontend",
        "wasmtime_internal_cranelift",
    ] {
        if !level.contains(quiet) {
            filter = filter.add_directive(format!("{quiet}=warn").parse()?);
        }
    }
    Ok(filter)
}

/// How much of a client-chosen string (an `Origin`, a name) a log line keeps.
pub const UNTRUSTED_BYTES: usize = 128;

/// A client-chosen string cut to [`UNTRUSTED_BYTES`], to be logged as a `&str` field
/// (escaped by both output formats).
pub fn untrusted(s: &str) -> &str {
    crate::protocol::truncate_utf8(s, UNTRUSTED_BYTES)
}

/// Lets at most `per_sec` lines through per wall-clock second, for log lines a client
/// can cause at will (refused origins, bad API keys).
pub struct Throttle {
    second: AtomicU64,
    count: AtomicU32,
    per_sec: u32,
}

impl Throttle {
    pub const fn new(per_sec: u32) -> Self {
        Self {
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            per_sec,
        }
    }

    /// Whether this line may be logged.
    pub fn allow(&self) -> bool {
        let now = crate::protocol::now_ms() / 1000;
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < self.per_sec
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level.
pub fn init(format: LogFormat, level: &str) -> LogControl {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| filter(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    // `audit` and `plugin` lines are told apart by their target.
                    .with_target(true),
            )
            .init(),
    }
    LogControl { handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_a_few_lines_through_per_second() {
        let t = Throttle::new(3);
        let passed = (0..100).filter(|_| t.allow()).count();
        // Two wall-clock seconds at most in a loop this short.
        assert!((3..=6).contains(&passed), "{passed}");
    }

    #[test]
    fn untrusted_strings_are_cut() {
        assert_eq!(untrusted(&"a".repeat(1000)).len(), UNTRUSTED_BYTES);
    }
}
