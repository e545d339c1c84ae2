//! Log set-up: readable text by default, JSON lines with `--log-format json`. The level
//! filter can be swapped at run time (SIGHUP reloads `log.level`).
//!
//! What is never logged, whatever the filter: the crates that log whole WebSocket or HTTP
//! frames ([`PAYLOAD_LOGGERS`]: tungstenite prints `connect` and `refresh` frames, tokens
//! included, at `trace`) are dropped by a filter on the output layer itself, after the
//! user's `log.level` / `RUST_LOG`, so no directive can turn them back on. Strings a client
//! or a plugin chooses (user ids, names, origins, plugin log lines) are logged as escaped
//! `&str` fields (text output prints them quoted, with `\n` escaped) or through
//! [`Escaped`] and, where an attacker can repeat them at will, truncated ([`untrusted`])
//! and rate-limited ([`Throttle`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tracing_subscriber::filter::filter_fn;
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

/// The filter for a level: the plugin compiler's and the QUIC stack's own chatter stays
/// at `warn` unless the level names it; the WebTransport layer's at `error` (its
/// warnings are about what a peer did, such as closing without a capsule: a client could
/// fill the log with them).
fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut filter = EnvFilter::try_new(level)?;
    let quiet = [
        ("wasmtime", "warn"),
        ("cranelift_codegen", "warn"),
        ("cranelift_frontend", "warn"),
        ("wasmtime_internal_cranelift", "warn"),
        ("quinn", "warn"),
        ("quinn_proto", "warn"),
        ("quinn_udp", "warn"),
        ("rustls", "warn"),
        ("web_transport_proto", "error"),
        ("web_transport_quinn", "error"),
    ];
    for (target, at) in quiet {
        if !level.contains(target) {
            filter = filter.add_directive(format!("{target}={at}").parse()?);
        }
    }
    Ok(filter)
}

/// Targets whose events are dropped under every filter: they log frame payloads (tokens)
/// or request headers (API keys).
pub const PAYLOAD_LOGGERS: &[&str] = &["tungstenite", "tokio_tungstenite", "hyper", "h2"];

/// Whether an event's target belongs to one of [`PAYLOAD_LOGGERS`] (or a module of one).
fn is_payload_logger(target: &str) -> bool {
    PAYLOAD_LOGGERS.iter().any(|crate_name| {
        target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// How much of a client-chosen string (an `Origin`, a name) a log line keeps.
pub const UNTRUSTED_BYTES: usize = 128;

/// A client-chosen string cut to [`UNTRUSTED_BYTES`], to be logged as a `&str` field
/// (escaped by both output formats).
pub fn untrusted(s: &str) -> &str {
    crate::protocol::truncate_utf8(s, UNTRUSTED_BYTES)
}

/// Displays a string with its control characters escaped (`\n` as `\\n`), for text that
/// goes into a log line's message, which the text output prints as is.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
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

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level;
/// [`PAYLOAD_LOGGERS`] stay off under both.
pub fn init(format: LogFormat, level: &str) -> LogControl {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| filter(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let never = || filter_fn(|meta| !is_payload_logger(meta.target()));
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_filter(never()))
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    // `audit` and `plugin` lines are told apart by their target.
                    .with_target(true)
                    .with_filter(never()),
            )
            .init(),
    }
    LogControl { handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_loggers_are_matched_by_crate_not_by_prefix() {
        assert!(is_payload_logger("tungstenite"));
        assert!(is_payload_logger("tungstenite::protocol"));
        assert!(is_payload_logger("tokio_tungstenite"));
        assert!(is_payload_logger("hyper::proto::h1::io"));
        assert!(!is_payload_logger("hookwire"));
        assert!(!is_payload_logger("hyperloop"));
    }

    #[test]
    fn throttle_lets_a_few_lines_through_per_second() {
        let t = Throttle::new(3);
        let passed = (0..100).filter(|_| t.allow()).count();
        // Two wall-clock seconds at most in a loop this short.
        assert!((3..=6).contains(&passed), "{passed}");
    }

    #[test]
    fn escaped_keeps_text_and_escapes_control_characters() {
        let shown = Escaped("a \"quote\" é\nINFO forged\r\u{1b}[31m").to_string();
        assert_eq!(shown, "a \"quote\" é\\nINFO forged\\r\\u{1b}[31m");
    }

    #[test]
    fn untrusted_strings_are_cut() {
        assert_eq!(untrusted(&"a".repeat(1000)).len(), UNTRUSTED_BYTES);
    }
}
