//! The audit trail: every refusal, data change, reroute and emitted publication a
//! plugin makes, to the `audit` tracing target and, when configured, an append-only
//! JSONL file written by its own thread (a slow disk never stalls a publication).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;

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
    file: Option<mpsc::Sender<String>>,
}

impl Audit {
    pub fn tracing_only() -> Self {
        Self { file: None }
    }

    /// Appends to `path` (created if missing); lines are flushed whenever the writer
    /// catches up.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
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
        Ok(Self { file: Some(tx) })
    }

    pub fn record(&self, r: &Record<'_>) {
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
            let _ = tx.send(line);
        }
    }
}
