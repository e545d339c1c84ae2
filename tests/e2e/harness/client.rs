//! The protocol v1 WebSocket test client and how its connection ended.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wait::{WAIT, deadline};
use super::wt::WtWire;

pub struct Client {
    wire: Wire,
    next_id: u64,
    /// Pushes seen while waiting for a reply.
    pub pushes: std::collections::VecDeque<Value>,
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
}

/// What the client speaks over.
enum Wire {
    WebSocket(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    WebTransport(Box<WtWire>),
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
        Self::upgrade_over(url.into_client_request().unwrap(), stream).await
    }

    /// Opens a connection (offering `hookwire.v1`) over a TCP stream the test made, e.g.
    /// from another loopback source address.
    pub async fn open_over(url: &str, stream: TcpStream) -> Self {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static("hookwire.v1"),
        );
        Self::upgrade_over(request, stream).await
    }

    async fn upgrade_over(request: http::Request<()>, stream: TcpStream) -> Self {
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
            wire: Wire::WebSocket(Box::new(ws)),
            next_id: 1,
            pushes: Default::default(),
            subprotocol,
        }
    }

    /// A WebTransport client of `broker` (started with `--dev`): the certificate's hash
    /// from `GET /dev/cert-hash`, then one session and its stream.
    pub async fn open_wt(broker: &super::TestBroker) -> Self {
        Self::from_wt(
            WtWire::open(broker, "/wt", None)
                .await
                .expect("WebTransport session"),
        )
    }

    pub fn from_wt(wire: WtWire) -> Self {
        Self {
            wire: Wire::WebTransport(Box::new(wire)),
            next_id: 1,
            pushes: Default::default(),
            subprotocol: None,
        }
    }

    /// The WebSocket underneath (for tests of WebSocket framing).
    pub fn ws(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        match &mut self.wire {
            Wire::WebSocket(ws) => ws,
            Wire::WebTransport(_) => panic!("a WebTransport client has no WebSocket"),
        }
    }

    /// The WebTransport session underneath.
    pub fn wt(&mut self) -> &mut WtWire {
        match &mut self.wire {
            Wire::WebTransport(wt) => wt,
            Wire::WebSocket(_) => panic!("a WebSocket client has no WebTransport session"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        match &mut self.wire {
            Wire::WebSocket(ws) => ws.send(Message::Text(text.into())).await.unwrap(),
            Wire::WebTransport(wt) => wt.send_line(text).await,
        }
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
        let ws = match &mut self.wire {
            Wire::WebSocket(ws) => ws,
            Wire::WebTransport(wt) => {
                return wt.read_frame(deadline).await.expect("connection ended");
            }
        };
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
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
        let ws = match &mut self.wire {
            Wire::WebSocket(ws) => ws,
            Wire::WebTransport(wt) => {
                while let Some(v) = wt.read_frame(deadline).await {
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    } else {
                        frames.push(v);
                    }
                }
                let (code, reason) = wt.close_code(deadline).await;
                return Closed {
                    disconnect,
                    code,
                    reason,
                    frames,
                };
            }
        };
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next())
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

/// The `data.n` of each message, in order (tests publish `{"n": i}` to check order).
pub fn data_ns(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("a message with data.n"))
        .collect()
}
