//! Transports adapt a client connection into a stream of [`Inbound`] items and a sink for
//! batches of [`EncodedFrame`]s. Sessions see only the [`Transport`] trait, so they run the
//! same over WebSocket, WebTransport or in-memory channels in tests.

pub mod ws;
pub mod wt;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::{CloseCode, EncodedFrame};

/// One thing a client sent.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame (WebSocket) or a line (a stream): one JSON object, UTF-8 (the
    /// session checks it; 1007 otherwise).
    Text(Bytes),
    /// A binary frame (not part of protocol v1).
    Binary,
    /// Transport-level traffic (a pong, a ping): the client is alive.
    Activity,
    /// A frame over the size limit; the connection must close with 1009.
    TooLarge,
    /// A frame that breaks RFC 6455 (1002: unmasked, reserved bits set, a fragmented
    /// control frame) or a text frame that is not UTF-8 (1007); the connection must close
    /// with this code and reason (the transport's description of what was wrong).
    Invalid(CloseCode, String),
    /// The client closed the connection or it failed.
    Closed,
}

/// Which transport a connection came over: a label in logs, metrics, the admin view and
/// the plugin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    WebSocket,
    WebTransport,
    /// In-memory transports of the session tests.
    Memory,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::WebTransport => "webtransport",
            Self::Memory => "memory",
        }
    }
}

/// How a connection is kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// The session pings every `limits.ping_interval_ms` and ends a connection that
    /// answers nothing for `limits.pong_timeout_ms` (WebSocket).
    Pings,
    /// The transport does it itself (QUIC: its idle timeout and keep-alive); the session
    /// never pings.
    Transport,
}

/// A way around the connection's queue for frames worthless when late (volatile
/// namespaces): WebTransport datagrams. Called by the publishing thread, under the
/// channel's lock: it never waits.
pub trait Datagrams: Send + Sync {
    /// Sends `frame` as one datagram now; `false` when it cannot go so (larger than the
    /// path takes, or the connection is gone), and the caller queues it as usual.
    fn send(&self, frame: &EncodedFrame) -> bool;
}

/// A way around the connection's queue while traffic is light: the publishing thread
/// writes a frame on the socket itself (WebSocket), instead of waking the connection's
/// task to do it. Called under the queue's lock (see [`crate::outbound`]); never waits.
pub trait DirectWrite: Send + Sync {
    /// Writes `frame` now if the socket takes it.
    fn try_write(&self, frame: &EncodedFrame) -> Direct;

    /// Writes the front of `frames` as far as the socket takes it now, popping what went:
    /// [`Direct::Written`] once none is left, [`Direct::Begun`] when one went in part (it
    /// is popped; the rest is kept as with `try_write`), [`Direct::Not`] when the socket
    /// took no more. A transport that can gathers several frames into one write; this
    /// default writes them one by one.
    fn try_write_queued(&self, frames: &mut VecDeque<EncodedFrame>) -> Direct {
        while let Some(frame) = frames.front() {
            let wrote = self.try_write(frame);
            if wrote == Direct::Not {
                return Direct::Not;
            }
            frames.pop_front();
            if wrote == Direct::Begun {
                return Direct::Begun;
            }
        }
        Direct::Written
    }
}

/// What a [`DirectWrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// The whole frame went out.
    Written,
    /// Part of it went; the rest is kept, and the connection's writer must finish it
    /// before anything else.
    Begun,
    /// Nothing went (the socket is full, or busy with another write): queue it.
    Not,
}

/// A write failed; the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("transport write failed: {0}")]
pub struct WriteError(pub String);

pub trait Transport: Send {
    /// Which transport this is (logs, metrics, plugins).
    fn kind(&self) -> TransportKind;

    /// Who keeps the connection alive.
    fn keepalive(&self) -> Keepalive {
        Keepalive::Pings
    }

    /// Whether each write costs a packet of its own (QUIC): the session then lets a
    /// batch gather for one scheduler turn before writing it.
    fn gathers(&self) -> bool {
        false
    }

    /// Unreliable datagrams beside the stream, when the transport has them.
    fn datagrams(&self) -> Option<Arc<dyn Datagrams>> {
        None
    }

    /// The socket, for writes from the publishing thread, when the transport allows them.
    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        None
    }

    /// Whether a session over this transport may park while idle (give its task up
    /// until the socket or its queue has something: `session::park`).
    fn parks(&self) -> bool {
        false
    }

    /// For a session that parks: registers `cx` to be woken once there may be something
    /// to read, and is `Ready` when there may be now (then the session does not park).
    /// Only called when [`Transport::parks`] says so.
    fn poll_park(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let _ = cx;
        std::task::Poll::Ready(())
    }

    /// The next inbound item. Must be cancel-safe: sessions poll it in `select!`.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;

    /// Writes every frame of `batch`, in order, with as few syscalls as it can (one flush),
    /// and leaves `batch` empty.
    fn send(
        &mut self,
        batch: &mut VecDeque<EncodedFrame>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Sends a keepalive ping (only with [`Keepalive::Pings`]).
    fn ping(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Closes with a code and reason, best effort.
    fn close(&mut self, code: CloseCode, reason: &str) -> impl Future<Output = ()> + Send;
}
