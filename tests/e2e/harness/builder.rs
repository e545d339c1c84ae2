//! How a test broker is configured and started: config file, environment, arguments, and
//! the wait for its listeners.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::broker::TestBroker;
use super::tokens::SECRET;
use super::wait::WAIT;

pub struct Builder {
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Default variables this test does not want set.
    unset: Vec<String>,
    args: Vec<String>,
    secret: bool,
    /// How long `start` waits for the listeners (default [`WAIT`]).
    start_timeout: Duration,
    /// `--log-format`: `json` (default) or `text`.
    log_format: &'static str,
}

/// Variables every test broker gets unless a test overrides or unsets them. Rate limits
/// are off so that tests of other behaviour can send as fast as they like; the limit
/// tests turn each one on.
const DEFAULT_ENV: &[(&str, &str)] = &[
    ("HOOKWIRE_WS_ADDR", "127.0.0.1:0"),
    ("HOOKWIRE_ADMIN_ADDR", "127.0.0.1:0"),
    ("HOOKWIRE_QUIC_ADDR", "127.0.0.1:0"),
    ("HOOKWIRE_LOG_LEVEL", "debug"),
    ("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_CONNECTION_SUBSCRIBES_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_CHANNEL_JOIN_LEAVE_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_USER_PUBLISHES_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_IP_CONNECTS_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_PER_SEC", "0"),
    // Plugin tests turn plugins on with their own config (tests/e2e/plugins.rs).
    ("HOOKWIRE_PLUGINS_ENABLED", "false"),
];

/// Log lines of a running broker, shared with the threads that read its output.
type Logs = Arc<Mutex<Vec<String>>>;

impl Builder {
    /// The shipped config, the harness's default environment, the test secret.
    pub(super) fn new() -> Self {
        Self {
            config: None,
            env: Vec::new(),
            unset: Vec::new(),
            args: Vec::new(),
            secret: true,
            start_timeout: WAIT,
            log_format: "json",
        }
    }

    /// Replaces the shipped config with this TOML (listener addresses are still forced to port 0).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves one of the harness's default variables unset (see `DEFAULT_ENV`).
    pub fn unset_env(mut self, key: &str) -> Self {
        self.unset.push(key.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts without `HOOKWIRE_JWT_SECRET` (for `--dev`, or configs without HS256).
    pub fn without_secret(mut self) -> Self {
        self.secret = false;
        self
    }

    /// Logs as the text output prints them for people (without colours) instead of JSON.
    pub fn text_logs(mut self) -> Self {
        self.log_format = "text";
        self.env("NO_COLOR", "1")
    }

    /// Waits this long for the listeners instead of [`WAIT`] (a broker that compiles a
    /// large plugin before it listens).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the broker and waits until both listeners are bound.
    pub async fn start(self) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("hookwire.toml");
        self.write_config(&config_path);
        let mut child = self.command(&config_path).spawn().expect("start hookwire");
        let logs = Logs::default();
        let listening = capture_output(&mut child, &logs);
        let (ws_addr, admin_addr, quic_addr) =
            wait_listening(&listening, &logs, self.start_timeout);
        TestBroker {
            child,
            ws_addr,
            admin_addr,
            quic_addr,
            logs,
            config_path,
            _dir: dir,
        }
    }

    /// Writes this builder's config, or the shipped one, where the broker will read it.
    fn write_config(&self, path: &Path) {
        let toml = match &self.config {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/hookwire.toml"
            ))
            .unwrap(),
        };
        std::fs::write(path, toml).unwrap();
    }

    /// `hookwire serve` with JSON logs and only the environment this builder sets.
    fn command(&self, config_path: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwire"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config_path)
            .arg("--log-format")
            .arg(self.log_format)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in DEFAULT_ENV {
            if !self.unset.iter().any(|u| u == k) {
                cmd.env(k, v);
            }
        }
        if self.secret {
            cmd.env("HOOKWIRE_JWT_SECRET", SECRET);
        }
        // What the broker keeps on disk stays in this test's own directory.
        if let Some(dir) = config_path.parent() {
            cmd.env("HOOKWIRE_DATA_DIR", dir.join("data"));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Reads the broker's stdout and stderr into `logs` on two threads; the returned channel
/// gets every `Listening` line.
fn capture_output(child: &mut Child, logs: &Logs) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"Listening\"") || line.contains(" Listening ") {
                    let _ = tx.send(line.clone());
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    rx
}

/// Waits for the `Listening` lines of both listeners: (WebSocket, admin, QUIC) addresses
/// (the QUIC listener's line, when it runs, comes before the WebSocket one).
fn wait_listening(
    listening: &Receiver<String>,
    logs: &Logs,
    timeout: Duration,
) -> (SocketAddr, SocketAddr, Option<SocketAddr>) {
    let (mut ws_addr, mut admin_addr, mut quic_addr) = (None, None, None);
    let deadline = std::time::Instant::now() + timeout;
    while ws_addr.is_none() || admin_addr.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match listening.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => panic!(
                "broker did not start; logs:\n{}",
                logs.lock().unwrap().join("\n")
            ),
        };
        let (listener, addr) = parse_listening(&line);
        match listener.as_str() {
            "ws" => ws_addr = Some(addr),
            "admin" => admin_addr = Some(addr),
            "quic" => quic_addr = Some(addr),
            _ => {}
        }
    }
    (ws_addr.unwrap(), admin_addr.unwrap(), quic_addr)
}

/// (listener, address) of a `Listening` line, JSON or text
/// (`… INFO Listening listener="ws" addr=127.0.0.1:4242 …`).
fn parse_listening(line: &str) -> (String, SocketAddr) {
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).unwrap();
        let addr = v["addr"].as_str().unwrap().parse().unwrap();
        return (v["listener"].as_str().unwrap_or("").to_string(), addr);
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .trim_matches('"')
            .to_string()
    };
    (field("listener="), field("addr=").parse().unwrap())
}
