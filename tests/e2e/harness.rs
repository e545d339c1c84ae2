//! Test harness: starts the real `hookwire` binary on port 0 and talks to it with a real
//! WebSocket client over loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hookwire::auth::TokenSpec;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret every test broker runs with.
pub const SECRET: &str = "e2e-test-secret-e2e-test-secret-0123456789";

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    child: Child,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub struct Builder {
    config: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl TestBroker {
    pub fn builder() -> Builder {
        Builder {
            config: None,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A broker with the shipped config.
    pub async fn start() -> Self {
        Self::builder().start().await
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
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?}"
            );
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
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client connected and authenticated as `sub` with these subscribe patterns.
    pub async fn client(&self, sub: &str, channels: &[&str]) -> Client {
        let token = token(sub, channels);
        let mut c = Client::open(&self.ws_url()).await;
        let reply = c.request(json!({"type": "connect", "token": token})).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        c
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path).await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Builder {
    /// Replaces the shipped config with this TOML (listener addresses are still forced to port 0).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub async fn start(self) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("hookwire.toml");
        let toml = match self.config {
            Some(t) => t,
            None => std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/hookwire.toml"
            ))
            .unwrap(),
        };
        std::fs::write(&config_path, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwire"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOOKWIRE_JWT_SECRET", SECRET)
            .env("HOOKWIRE_WS_ADDR", "127.0.0.1:0")
            .env("HOOKWIRE_ADMIN_ADDR", "127.0.0.1:0")
            .env("HOOKWIRE_LOG_LEVEL", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start hookwire");
        let logs = Arc::new(Mutex::new(Vec::new()));
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
                    if line.contains("\"Listening\"") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let (mut ws_addr, mut admin_addr) = (None, None);
        let deadline = std::time::Instant::now() + WAIT;
        while ws_addr.is_none() || admin_addr.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "broker did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            };
            let v: Value = serde_json::from_str(&line).unwrap();
            let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
            match v["listener"].as_str() {
                Some("ws") => ws_addr = Some(addr),
                Some("admin") => admin_addr = Some(addr),
                _ => {}
            }
        }
        TestBroker {
            child,
            ws_addr: ws_addr.unwrap(),
            admin_addr: admin_addr.unwrap(),
            logs,
            _dir: dir,
        }
    }
}

/// Starts the broker with extra arguments and returns (exit code, output) when it exits by itself.
pub fn run_hookwire(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwire"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A token signed with [`SECRET`] valid for an hour.
pub fn token(sub: &str, channels: &[&str]) -> String {
    TokenSpec::new(sub, Duration::from_secs(3600))
        .channels(channels.iter().copied())
        .sign_hs256(SECRET.as_bytes())
}

pub fn spec(sub: &str, channels: &[&str]) -> TokenSpec {
    TokenSpec::new(sub, Duration::from_secs(3600)).channels(channels.iter().copied())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A real WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Pushes seen while waiting for a reply.
    pub pushes: std::collections::VecDeque<Value>,
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
pub struct Closed {
    /// The `disconnect` push, if one came before the close.
    pub disconnect: Option<Value>,
    pub code: Option<u16>,
    pub reason: String,
}

impl Client {
    pub async fn open(url: &str) -> Self {
        Self::open_with(url.into_client_request().unwrap()).await
    }

    pub async fn open_with(mut request: http::Request<()>) -> Self {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static("hookwire.v1"),
        );
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("WebSocket connect");
        let subprotocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Self {
            ws,
            next_id: 1,
            pushes: Default::default(),
            subprotocol,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Next JSON frame from the server (pushes buffered earlier first).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pushes.pop_front() {
            return v;
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the server in time")
                .expect("connection ended")
                .expect("read failed");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Sends a request with a fresh id and waits for the frame with that id; pushes that
    /// arrive meanwhile are kept for [`Client::recv`].
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        loop {
            let v = self.recv_wire().await;
            if v["id"] == json!(id) {
                return v;
            }
            self.pushes.push_back(v);
        }
    }

    /// Waits for the next push of a type, keeping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.pushes.iter().position(|v| v["type"] == kind) {
            return self.pushes.remove(pos).unwrap();
        }
        loop {
            let v = self.recv_wire().await;
            if v["type"] == kind {
                return v;
            }
            self.pushes.push_back(v);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(r["type"], "subscribed", "{r}");
        r
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        let r = self
            .request(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
        assert_eq!(r["type"], "published", "{r}");
        r
    }

    /// Reads until the connection closes; returns the `disconnect` push and the close frame.
    pub async fn closed(&mut self) -> Closed {
        let mut disconnect = None;
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("connection did not close in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(CloseFrame { code, reason }) => {
                            (Some(u16::from(code)), reason.to_string())
                        }
                        None => (None, String::new()),
                    };
                    return Closed {
                        disconnect,
                        code,
                        reason,
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    return Closed {
                        disconnect,
                        code: None,
                        reason: String::new(),
                    };
                }
            }
        }
    }
}
