//! A running test broker: the `hookwire` process, its logs, signals and exit, and clients
//! connected to it.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::builder::Builder;
use super::client::Client;
use super::tokens::token;
use super::wait::deadline;

/// The real `hookwire` binary, listening on port 0; killed when dropped.
pub struct TestBroker {
    pub(super) child: Child,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The WebTransport listener, when it runs (`--dev`, or a certificate).
    pub quic_addr: Option<SocketAddr>,
    pub(super) logs: Arc<Mutex<Vec<String>>>,
    pub(super) config_path: std::path::PathBuf,
    pub(super) _dir: tempfile::TempDir,
}

impl TestBroker {
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A broker with the shipped config.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The config file the broker was started with (tests may rewrite it, then SIGHUP).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config_path.clone()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Every log line so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = deadline();
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the broker process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client connected and authenticated as `sub` with these subscribe patterns.
    pub async fn client(&self, sub: &str, channels: &[&str]) -> Client {
        self.client_with(&token(sub, channels)).await
    }

    /// A client connected and authenticated with this token.
    pub async fn client_with(&self, token: &str) -> Client {
        let (c, reply) = self.connect(token).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        c
    }

    /// Opens a connection and sends `connect` with this token; returns the reply, whatever it is.
    pub async fn connect(&self, token: &str) -> (Client, Value) {
        let mut c = Client::open(&self.ws_url()).await;
        let reply = c.request(json!({"type": "connect", "token": token})).await;
        (c, reply)
    }

    /// Log lines containing `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub async fn wait_logs(&self, needle: &str, n: usize) {
        let deadline = deadline();
        while self.count_logs(needle) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} log lines with {needle:?}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path).await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // A failing test shows what its brokers warned about (everything they logged
        // with `HOOKWIRE_TEST_ALL_LOGS` set).
        if std::thread::panicking() {
            let all = std::env::var_os("HOOKWIRE_TEST_ALL_LOGS").is_some();
            for line in self.logs() {
                if all || line.contains("\"WARN\"") || line.contains("\"ERROR\"") {
                    eprintln!("broker {}: {line}", self.ws_addr);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET on a listener: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = crate::http::request(addr, "GET", path, None, None).await;
    (r.status, r.body)
}
