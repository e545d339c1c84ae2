//! Log set-up: readable text by default, JSON lines with `--log-format json`. The level
//! filter can be swapped at run time (SIGHUP reloads `log.level`).

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
