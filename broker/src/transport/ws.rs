//! WebSocket transport: `GET /ws` on the client listener (tokio-tungstenite).
//!
//! Buffers are sized deliberately: a small read buffer (grows only for a larger frame), a
//! write buffer that gathers a batch of frames into one socket write, and a bound on it.
//!
//! The checks before a session are the transport-free edge's (`edge`): a handshake slot at
//! accept, the upgrade request (`upgrade` reads it for `edge::check_request`), the
//! handshake deadline, then the connection limits and the session (`edge::run`).
//!
//! tungstenite keeps its write buffer's capacity for the connection's life (a `Vec` it
//! drains, with no way to shrink it from outside), and copies a whole message into it
//! before writing. So a message larger than [`FRAGMENT_BYTES`] is sent as WebSocket
//! fragments of that size (RFC 6455, section 5.4; clients reassemble them into the same
//! message): the buffer never holds more than `write_buffer_bytes` plus one fragment,
//! however large a reply is, and a large reply leaves no large buffer behind.

// tungstenite's upgrade callback returns its `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

pub mod pages;
mod upgrade;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data as OpData, OpCode,
};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use crate::edge::{self, Checked};
use crate::limits::Admission;
use crate::node::{Node, Settings};
use crate::protocol::{CloseCode, EncodedFrame};
use crate::transport::{Inbound, Transport, TransportKind, WriteError};
use pages::Pages;
use upgrade::check_upgrade;

/// The path clients upgrade on.
pub const PATH: &str = "/ws";

/// Messages longer than this go out as fragments of this size (see the module doc).
/// Publications up to the default `limits.max_frame_bytes` are never fragmented.
pub const FRAGMENT_BYTES: usize = 64 << 10;

/// Accepts connections until shutdown; each runs in its own task on the node's tracker.
/// Requests for other paths than [`PATH`] get the plain HTTP [`pages`].
pub async fn serve(listener: TcpListener, node: Arc<Node>, pages: Arc<Pages>) {
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => match edge::begin(&node, remote) {
                    Some(admission) => {
                        node.tasks.spawn(connection(stream, remote, node.clone(), admission, pages.clone()));
                    }
                    // Closed at once: no task, no buffer, not a byte read.
                    None => drop(stream),
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning,
                    // and say so at most every 5 s.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, open = node.connections.open(), "Accept failed; set connections.max below the open-files limit");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

pub fn ws_config(settings: &Settings) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer_bytes)
        .write_buffer_size(settings.write_buffer_bytes)
        // Bounded: the buffer passes write_buffer_size by at most one frame before a flush.
        .max_write_buffer_size(settings.write_buffer_bytes + (8 << 20))
        .max_message_size(Some(settings.max_frame_bytes))
        .max_frame_size(Some(settings.max_frame_bytes))
}

/// One connection: the upgrade, then the session. An async block, not an async fn, so the
/// task's state does not keep the arguments twice (see `session::run`).
// Deliberately not `async fn`: see the doc comment (the state's size).
#[allow(clippy::manual_async_fn)]
fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    node: Arc<Node>,
    admission: Admission,
    pages: Arc<Pages>,
) -> impl Future<Output = ()> + Send {
    async move {
        let opened = Instant::now();
        let Some(slot) = edge::slot(admission, edge::deadline(&node, opened)).await else {
            tracing::debug!(remote = %remote, "No handshake slot came free in time; closed");
            return;
        };
        let _ = stream.set_nodelay(true);
        match wants_upgrade(&stream, edge::deadline(&node, opened)).await {
            Some(true) => drop(pages),
            Some(false) => {
                let deadline = edge::deadline(&node, opened);
                return Box::pin(pages::serve(stream, remote, &node, &pages, deadline)).await;
            }
            None => return,
        }
        let mut checked = Checked::default();
        let config = ws_config(&node.settings);
        // Boxed: the handshake's buffers live only while it runs, not in every connection task.
        let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            |req: &Request, resp: Response| check_upgrade(&node, remote, req, resp, &mut checked),
            Some(config),
        ));
        let ws = match tokio::time::timeout_at(edge::deadline(&node, opened), handshake).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(remote = %remote, error = %e, "WebSocket upgrade failed");
                return;
            }
            Err(_) => {
                tracing::debug!(remote = %remote, "WebSocket upgrade timed out");
                return;
            }
        };
        // Connection limits answer with a WebSocket close (1013), so they are checked
        // after the upgrade.
        edge::run(node, WsTransport { ws }, remote, opened, slot, checked).await;
    }
}

/// Whether the request is for [`PATH`] (`GET /ws `, `GET /ws?`), from its first bytes,
/// peeked (tungstenite reads them again); `None` when the client sent nothing in time.
async fn wants_upgrade(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    const PREFIX: &[u8] = b"GET /ws";
    let mut head = [0u8; PREFIX.len() + 1];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut head))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if n == head.len() || !PREFIX.starts_with(&head[..n]) {
            return Some(head.starts_with(PREFIX) && matches!(head[PREFIX.len()], b' ' | b'?'));
        }
        // A request line cut in its first bytes (rare): wait for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub struct WsTransport {
    ws: WebSocketStream<TcpStream>,
}

fn write_err(e: WsError) -> WriteError {
    WriteError(e.to_string())
}

impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    async fn recv(&mut self) -> Inbound {
        match self.ws.next().await {
            Some(Ok(Message::Text(text))) => Inbound::Text(text.into()),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Activity,
            Some(Ok(Message::Close(_))) | None => Inbound::Closed,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => Inbound::TooLarge,
            // A broken frame (unmasked, reserved bits, a fragmented or oversized control
            // frame, a bad opcode): the socket still works, so the session closes with 1002.
            Some(Err(WsError::Protocol(e))) => {
                Inbound::Invalid(CloseCode::ProtocolError, e.to_string())
            }
            Some(Err(WsError::Utf8(_))) => Inbound::Invalid(
                CloseCode::InvalidData,
                "a text frame is not valid UTF-8".into(),
            ),
            Some(Err(_)) => Inbound::Closed,
        }
    }

    async fn send(&mut self, batch: &mut VecDeque<EncodedFrame>) -> Result<(), WriteError> {
        // `feed` queues into tungstenite's write buffer (written when it passes
        // write_buffer_size); one flush per batch.
        while let Some(frame) = batch.pop_front() {
            if frame.len() > FRAGMENT_BYTES {
                self.feed_fragments(&frame).await?;
                continue;
            }
            // A text frame of the shared bytes as they are (no copy, no second UTF-8
            // check: `EncodedFrame` is UTF-8 by construction).
            let text = Frame::message(frame.bytes(), OpCode::Data(OpData::Text), true);
            self.ws
                .feed(Message::Frame(text))
                .await
                .map_err(write_err)?;
        }
        self.ws.flush().await.map_err(write_err)
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .map_err(write_err)
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: truncate_reason(reason).into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Give the client a moment to answer the close, so it is not cut off by a reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

impl WsTransport {
    /// Queues a large message as fragments of at most [`FRAGMENT_BYTES`], cut at UTF-8
    /// character boundaries (a text message's fragments need not be, but it costs nothing).
    async fn feed_fragments(&mut self, frame: &EncodedFrame) -> Result<(), WriteError> {
        let text = frame.as_str();
        let bytes = frame.bytes();
        let mut start = 0;
        while start < text.len() {
            let end = start + crate::protocol::truncate_utf8(&text[start..], FRAGMENT_BYTES).len();
            let opcode = if start == 0 {
                OpCode::Data(OpData::Text)
            } else {
                OpCode::Data(OpData::Continue)
            };
            let fragment = Frame::message(bytes.slice(start..end), opcode, end == text.len());
            self.ws
                .feed(Message::Frame(fragment))
                .await
                .map_err(write_err)?;
            start = end;
        }
        Ok(())
    }
}

/// Close reasons must fit a control frame (125 bytes with the code).
fn truncate_reason(reason: &str) -> &str {
    crate::protocol::truncate_utf8(reason, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let r = truncate_reason(&long);
        assert!(r.len() <= 120 && long.starts_with(r));
    }
}
