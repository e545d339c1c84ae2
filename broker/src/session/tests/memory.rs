//! An in-memory transport and the test client on its other end.
//!
//! The test side sends client frames into a channel the session reads as [`Inbound`] items,
//! and receives what the session writes as parsed JSON, followed by the close (code and
//! reason) if the session closes. When the session ends, its transport is dropped and the
//! client sees the end of the stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::Node;
use crate::protocol::{CloseCode, Disconnect, EncodedFrame};
use crate::session::{ConnInfo, run};
use crate::transport::{Inbound, Transport, TransportKind, WriteError};

/// Every wait in these tests is bounded by this.
pub(super) const WAIT: Duration = Duration::from_secs(5);

/// What the session did to its transport, in order.
#[derive(Debug)]
enum Event {
    /// A frame it wrote, parsed.
    Frame(Value),
    /// The close it sent.
    Close(u16, String),
    /// The session's task panicked (the transport is dropped while it unwinds).
    Panicked,
}

/// The session's end of an in-memory connection.
pub(super) struct MemoryTransport {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    /// An item taken while parking (a channel cannot be peeked): `recv` gives it first.
    parked_on: Option<Inbound>,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.events.send(Event::Panicked);
        }
    }
}

impl Transport for MemoryTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Memory
    }

    // Sessions in these tests park as over a socket, so every test goes through it.
    fn parks(&self) -> bool {
        true
    }

    fn poll_park(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.parked_on.is_none() {
            let item = std::task::ready!(self.inbound.poll_recv(cx));
            self.parked_on = Some(item.unwrap_or(Inbound::Closed));
        }
        std::task::Poll::Ready(())
    }

    async fn recv(&mut self) -> Inbound {
        if let Some(item) = self.parked_on.take() {
            return item;
        }
        // Cancel-safe: `mpsc::UnboundedReceiver::recv` is.
        self.inbound.recv().await.unwrap_or(Inbound::Closed)
    }

    async fn send(&mut self, batch: &mut VecDeque<EncodedFrame>) -> Result<(), WriteError> {
        for frame in batch.drain(..) {
            let value: Value = serde_json::from_str(frame.as_str()).unwrap_or_else(|e| {
                panic!("the server wrote a frame that is not JSON ({e}): {frame:?}")
            });
            self.events
                .send(Event::Frame(value))
                .map_err(|_| WriteError("the test client is gone".into()))?;
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        Ok(())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = self
            .events
            .send(Event::Close(code.code(), reason.to_string()));
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
pub(super) struct Closed {
    /// The `disconnect` push, if one came.
    pub disconnect: Option<Value>,
    /// The close code and reason, if the session closed (rather than just going away).
    pub close: Option<(u16, String)>,
    /// Every other frame read while waiting for the end, in order.
    pub frames: Vec<Value>,
}

impl Closed {
    /// Asserts the session sent `disconnect` with `code`, then closed with the same code.
    pub fn assert_code(&self, code: u16) {
        let d = self
            .disconnect
            .as_ref()
            .unwrap_or_else(|| panic!("no disconnect push before the close: {self:?}"));
        assert_eq!(d["code"], code, "{d}");
        assert!(!d["reason"].as_str().unwrap_or("").is_empty(), "{d}");
        assert!(d["reconnect"].is_boolean(), "{d}");
        let (close, reason) = self
            .close
            .as_ref()
            .expect("no close after the disconnect push");
        assert_eq!(*close, code, "{self:?}");
        assert_eq!(reason.as_str(), d["reason"].as_str().unwrap(), "{self:?}");
    }
}

/// The client's end of an in-memory connection, with its session running on a task.
pub(super) struct MemoryClient {
    to_server: Option<mpsc::UnboundedSender<Inbound>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Frames read while waiting for something else (a reply, a push of another type).
    pub pushes: VecDeque<Value>,
    next_id: u64,
    session: JoinHandle<()>,
}

impl MemoryClient {
    /// Opens a connection: the session starts waiting for `connect`.
    pub fn open(node: &Arc<Node>) -> Self {
        Self::open_with(node, None, None)
    }

    /// Opens a connection the transport refuses (`ConnInfo::refuse`).
    pub fn open_refused(node: &Arc<Node>, refuse: Disconnect) -> Self {
        Self::open_with(node, None, Some(refuse))
    }

    /// Opens a connection whose upgrade carried `Authorization: Bearer <bearer>`.
    pub fn open_with_bearer(node: &Arc<Node>, bearer: &str) -> Self {
        Self::open_with(node, Some(bearer.to_string()), None)
    }

    fn open_with(node: &Arc<Node>, bearer: Option<String>, refuse: Option<Disconnect>) -> Self {
        let (to_server, inbound) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let transport = MemoryTransport {
            inbound,
            parked_on: None,
            events: events_tx,
        };
        let conn = ConnInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            bearer,
            refuse: refuse.map(Box::new),
            opened: Instant::now(),
            handshake: None,
            admitted: None,
        };
        let session = tokio::spawn(run(Arc::clone(node), transport, conn));
        Self {
            to_server: Some(to_server),
            events,
            pushes: VecDeque::new(),
            next_id: 1,
            session,
        }
    }

    /// A connection that sent `connect` with this token and got `connected`.
    pub async fn connect(node: &Arc<Node>, token: &str) -> Self {
        let mut c = Self::open(node);
        let reply = c.request(json!({"type": "connect", "token": token})).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        c
    }

    /// Hands the session one inbound item (a text frame, a binary frame, activity).
    pub fn send_inbound(&mut self, inbound: Inbound) {
        let tx = self.to_server.as_ref().expect("the client already closed");
        // The session may have ended already; what it did is in `closed()`.
        let _ = tx.send(inbound);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_inbound(Inbound::Text(bytes::Bytes::copy_from_slice(
            text.as_bytes(),
        )));
    }

    pub fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string());
    }

    /// The client goes away: the session reads `Inbound::Closed`.
    pub fn hang_up(&mut self) {
        self.to_server = None;
    }

    /// The next frame the session wrote (frames read earlier first). Panics on the close.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pushes.pop_front() {
            return v;
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Value {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no frame from the session in time");
        match event {
            Some(Event::Frame(v)) => v,
            Some(Event::Close(code, reason)) => panic!("unexpected close {code}: {reason}"),
            Some(Event::Panicked) => panic!("the session panicked"),
            None => panic!("the session ended"),
        }
    }

    /// Sends a frame with a fresh id and waits for the frame with that id; other frames
    /// that arrive meanwhile are kept for [`MemoryClient::recv`].
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame);
        loop {
            let v = self.recv_wire().await;
            if v["id"] == json!(id) {
                return v;
            }
            self.pushes.push_back(v);
        }
    }

    /// Sends a request and asserts it fails with `code`; returns the error frame.
    pub async fn expect_error(&mut self, frame: Value, code: &str) -> Value {
        let r = self.request(frame).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert!(!r["message"].as_str().unwrap_or("").is_empty(), "{r}");
        r
    }

    /// The next frame of this type, keeping others.
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

    /// A `ping` answered by `pong`. Everything the session queued before it has arrived
    /// by then (one queue, in order), so a test can then assert what did not come.
    pub async fn ping(&mut self) {
        let r = self.request(json!({"type": "ping"})).await;
        assert_eq!(r["type"], "pong", "{r}");
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

    /// Reads until the session ends; returns the `disconnect` push, the close and the rest.
    pub async fn closed(&mut self) -> Closed {
        let mut closed = Closed {
            disconnect: None,
            close: None,
            frames: Vec::new(),
        };
        let earlier: Vec<Value> = self.pushes.drain(..).collect();
        for v in earlier {
            closed.frame(v);
        }
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("the session did not end in time");
            match event {
                Some(Event::Frame(v)) => closed.frame(v),
                Some(Event::Close(code, reason)) => closed.close = Some((code, reason)),
                Some(Event::Panicked) => panic!("the session panicked"),
                None => break,
            }
        }
        // The handshake's task (the live session runs in a task of its own, whose end
        // is its transport's drop, above).
        tokio::time::timeout(WAIT, &mut self.session)
            .await
            .expect("the session dropped its transport but did not end")
            .expect("the session's handshake panicked");
        closed
    }
}

impl Closed {
    fn frame(&mut self, v: Value) {
        if v["type"] == "disconnect" {
            assert!(self.disconnect.is_none(), "a second disconnect push: {v}");
            self.disconnect = Some(v);
        } else {
            assert!(self.close.is_none(), "a frame after the close: {v}");
            self.frames.push(v);
        }
    }
}
