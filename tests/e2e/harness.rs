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
use tokio::time::Instant;
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
    config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Builder {
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Default variables this test does not want set.
    unset: Vec<String>,
    args: Vec<String>,
    secret: bool,
    /// How long `start` waits for the listeners (default [`WAIT`]).
    start_timeout: Duration,
}

/// Variables every test broker gets unless a test overrides or unsets them. Rate limits
/// are off so that tests of other behaviour can send as fast as they like; the limit
/// tests turn each one on.
const DEFAULT_ENV: &[(&str, &str)] = &[
    ("HOOKWIRE_WS_ADDR", "127.0.0.1:0"),
    ("HOOKWIRE_ADMIN_ADDR", "127.0.0.1:0"),
    ("HOOKWIRE_LOG_LEVEL", "debug"),
    ("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_USER_PUBLISHES_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_IP_CONNECTS_PER_SEC", "0"),
    ("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_PER_SEC", "0"),
    // Plugin tests turn plugins on with their own config (tests/e2e/plugins.rs).
    ("HOOKWIRE_PLUGINS_ENABLED", "false"),
];

impl TestBroker {
    pub fn builder() -> Builder {
        Builder {
            config: None,
            env: Vec::new(),
            unset: Vec::new(),
            args: Vec::new(),
            secret: true,
            start_timeout: WAIT,
        }
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

    /// Waits this long for the listeners instead of [`WAIT`] (a broker that compiles a
    /// large plugin before it listens).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
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
        let deadline = std::time::Instant::now() + self.start_timeout;
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
            config_path,
            _dir: dir,
        }
    }
}

/// Runs `hookwire` with these arguments and only these environment variables (plus `PATH`,
/// and listeners on port 0 in case it starts) and returns (exit code, stdout + stderr).
/// Panics if it has not exited within [`WAIT`].
pub fn run_hookwire(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwire"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOOKWIRE_WS_ADDR", "127.0.0.1:0")
        .env("HOOKWIRE_ADMIN_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start hookwire");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).to_string()
        })
    })
    .collect();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hookwire {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .collect::<String>();
    (status.code().unwrap_or(-1), text)
}

/// The deadline of a wait that starts now.
pub fn deadline() -> Instant {
    Instant::now() + WAIT
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with HS256 and [`SECRET`] (for claims `TokenSpec` does not have).
pub fn sign_claims(claims: &Value) -> String {
    sign_with(
        claims,
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// Signs claims with any header and key.
pub fn sign_with(
    claims: &impl serde::Serialize,
    header: jsonwebtoken::Header,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    jsonwebtoken::encode(&header, claims, key).expect("sign test token")
}

/// A token signed with [`SECRET`] valid for an hour.
pub fn token(sub: &str, channels: &[&str]) -> String {
    TokenSpec::new(sub, Duration::from_secs(3600))
        .channels(channels.iter().copied())
        .sign_hs256(SECRET.as_bytes())
}

/// A token like [`token`]'s, signed with a secret the broker does not know.
pub fn forged_token(sub: &str, channels: &[&str]) -> String {
    spec(sub, channels).sign_hs256(b"not-the-broker-secret-not-the-broker-secret")
}

pub fn spec(sub: &str, channels: &[&str]) -> TokenSpec {
    TokenSpec::new(sub, Duration::from_secs(3600)).channels(channels.iter().copied())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = crate::http::request(addr, "GET", path, None, None).await;
    (r.status, r.body)
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
    /// Every other frame read while waiting for the close, in order.
    pub frames: Vec<Value>,
}

impl Closed {
    /// Asserts the server sent `disconnect` with `code` and then closed with the same code.
    pub fn assert_code(&self, code: u16) {
        let d = self
            .disconnect
            .as_ref()
            .unwrap_or_else(|| panic!("no disconnect push before the close: {self:?}"));
        assert_eq!(d["code"], code, "{d}");
        assert!(!d["reason"].as_str().unwrap_or("").is_empty(), "{d}");
        assert!(d["reconnect"].is_boolean(), "{d}");
        assert_eq!(self.code, Some(code), "{self:?}");
    }
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
        Self::wrap(ws, &resp)
    }

    /// Opens a connection that offers no subprotocol.
    pub async fn open_without_subprotocol(url: &str) -> Self {
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("WebSocket connect");
        Self::wrap(ws, &resp)
    }

    /// Opens a connection whose socket has a tiny receive buffer, so a client that stops
    /// reading backs the server up after little data.
    pub async fn open_small_buffer(url: &str, addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let request = url.into_client_request().unwrap();
        let (ws, resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("upgrade timed out")
        .expect("WebSocket upgrade");
        Self::wrap(ws, &resp)
    }

    fn wrap(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        resp: &http::Response<Option<Vec<u8>>>,
    ) -> Self {
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
        self.recv_wire(deadline()).await
    }

    /// The next text frame from the socket, by `deadline` (control frames do not extend it).
    async fn recv_wire(&mut self, deadline: Instant) -> Value {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
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
        let deadline = deadline();
        loop {
            let v = self.recv_wire(deadline).await;
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
        let deadline = deadline();
        loop {
            let v = self.recv_wire(deadline).await;
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

    /// Sends a request and asserts it fails with `code`; returns the error frame.
    pub async fn expect_error(&mut self, frame: Value, code: &str) -> Value {
        let r = self.request(frame).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert!(!r["message"].as_str().unwrap_or("").is_empty(), "{r}");
        r
    }

    /// A ping that must be answered: the connection is alive and usable.
    pub async fn ping(&mut self) {
        let r = self.request(json!({"type": "ping"})).await;
        assert_eq!(r["type"], "pong", "{r}");
    }

    /// The next `n` `message` pushes of `channel` (other frames are kept for later).
    pub async fn messages(&mut self, channel: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        let mut kept = std::collections::VecDeque::new();
        let deadline = deadline();
        while out.len() < n {
            let v = match self.pushes.pop_front() {
                Some(v) => v,
                None => self.recv_wire(deadline).await,
            };
            if v["type"] == "message" && v["channel"] == channel {
                out.push(v);
            } else {
                kept.push_back(v);
            }
        }
        kept.extend(self.pushes.drain(..));
        self.pushes = kept;
        out
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
        let (mut disconnect, mut frames) = (None, Vec::new());
        for v in self.pushes.drain(..) {
            if v["type"] == "disconnect" {
                disconnect = Some(v);
            } else {
                frames.push(v);
            }
        }
        let deadline = deadline();
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("connection did not close in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    } else {
                        frames.push(v);
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
                        frames,
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    return Closed {
                        disconnect,
                        code: None,
                        reason: String::new(),
                        frames,
                    };
                }
            }
        }
    }
}

/// A WebSocket client written by hand over a raw TCP socket: it answers nothing by itself
/// (no pongs), so a test decides exactly what the server sees.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and performs the upgrade on `/ws`.
    pub async fn open(addr: SocketAddr) -> Self {
        use tokio::io::AsyncWriteExt;
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let mut c = Self {
            stream,
            buf: Vec::new(),
        };
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        c.stream.write_all(req.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(pos) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            assert!(
                c.fill(deadline()).await,
                "connection closed during the upgrade"
            );
        };
        let head = String::from_utf8_lossy(&c.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        c.buf.drain(..end);
        c
    }

    /// Reads more bytes into the buffer; false at end of stream (or a reset).
    async fn fill(&mut self, deadline: Instant) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
            .await
            .expect("no data from the server in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Sends a text frame (masked, as a client must; the zero mask keeps it readable).
    pub async fn send(&mut self, frame: Value) {
        use tokio::io::AsyncWriteExt;
        let payload = frame.to_string().into_bytes();
        let mut out = vec![0x81u8];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&payload);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next server frame as (opcode, payload); `None` once the connection has ended.
    async fn next_frame(&mut self, deadline: Instant) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, head) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= head + len {
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// The next text frame as JSON, skipping (and not answering) pings.
    pub async fn recv(&mut self) -> Value {
        let deadline = deadline();
        loop {
            let (opcode, payload) = self.next_frame(deadline).await.expect("connection ended");
            match opcode {
                0x1 => return serde_json::from_slice(&payload).unwrap(),
                0x9 | 0xa => continue,
                other => panic!("unexpected frame with opcode {other:#x}"),
            }
        }
    }

    /// Reads (and ignores) everything until the server ends the connection. Returns the
    /// frames' opcodes.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        let mut opcodes = Vec::new();
        let deadline = deadline();
        while let Some((opcode, _)) = self.next_frame(deadline).await {
            opcodes.push(opcode);
        }
        opcodes
    }
}
