//! WebSocket transport: `GET /ws` on the client listener (tokio-tungstenite).
//!
//! tungstenite does the handshake, reads and checks frames (a small read buffer that
//! grows only for a larger frame) and writes control frames. Queued data frames bypass
//! its write buffer: `send` frames them itself and gathers them in the worker thread's
//! buffer, one write per 64 KiB, so no connection keeps a write buffer of its own.
//! tungstenite's buffer is flushed first (a pong it owes) and a partly written frame is
//! finished before anything else, so frames stay whole.
//!
//! The checks before a session are the transport-free edge's (`edge`): a handshake slot at
//! accept, the upgrade request (`upgrade` reads it for `edge::check_request`), the
//! handshake deadline, then the connection limits and the session (`edge::run`).
//!
//! tungstenite keeps its write buffer's capacity for the connection's life (a `Vec` it
//! drains, with no way to shrink it from outside), and copies a whole message into it
//! before writing. So a message larger than [`FRAGMENT_BYTES`] is sent through it as
//! WebSocket fragments of that size (RFC 6455, section 5.4; clients reassemble them into
//! the same message): the buffer never holds more than `write_buffer_bytes` plus one
//! fragment, however large a reply is, and a large reply leaves no large buffer behind.

// tungstenite's upgrade callback returns its `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

pub mod pages;
mod upgrade;

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
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
        edge::run(node, WsTransport::new(ws), remote, opened, slot, checked).await;
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
    /// A frame the socket took only part of, and how many of its bytes (header
    /// included) went out: finished before anything else is written, even after the
    /// write that began it was abandoned, so the stream never holds half a frame.
    partial: Option<(EncodedFrame, usize)>,
}

fn write_err(e: WsError) -> WriteError {
    WriteError(e.to_string())
}

fn io_err(e: std::io::Error) -> WriteError {
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
        // Whatever tungstenite holds (a pong it owes) goes first, so frames stay whole.
        self.ws.flush().await.map_err(write_err)?;
        loop {
            self.finish_partial().await?;
            let Some(front) = batch.front() else {
                return Ok(());
            };
            if front.len() > FRAGMENT_BYTES {
                // Rare: a large message as fragments, through tungstenite's buffer.
                let frame = batch.pop_front().expect("front exists");
                self.feed_fragments(&frame).await?;
                self.ws.flush().await.map_err(write_err)?;
                continue;
            }
            let stream = self.ws.get_ref();
            match write_frames(stream, batch) {
                Ok(partial) => self.partial = partial,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stream.writable().await.map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        self.finish_partial().await?;
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .map_err(write_err)
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        // A close frame after half a frame would be read as part of it.
        if self.finish_partial().await.is_err() {
            return;
        }
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
    fn new(ws: WebSocketStream<TcpStream>) -> Self {
        Self { ws, partial: None }
    }

    /// Writes the rest of a partly written frame (cancel-safe: what is left stays in
    /// `partial` until it is out).
    async fn finish_partial(&mut self) -> Result<(), WriteError> {
        while let Some((frame, written)) = self.partial.take() {
            let mut header = [0u8; MAX_HEADER];
            let len = text_frame_header(frame.len(), &mut header);
            let (head, body) = skip_parts(&header[..len], frame.as_bytes(), written);
            let stream = self.ws.get_ref();
            match stream.try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)]) {
                Ok(n) if written + n < len + frame.len() => {
                    self.partial = Some((frame, written + n))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.partial = Some((frame, written));
                    stream.writable().await.map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

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

/// Bytes of frames gathered into one write. A frame longer than this (up to
/// [`FRAGMENT_BYTES`]) is written on its own, as two slices, without a copy.
const GATHER_BYTES: usize = 64 << 10;

thread_local! {
    /// Each worker thread's gather buffer: frames are copied here, written, and nothing
    /// stays behind in the connection (no write buffer per connection).
    static GATHER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(GATHER_BYTES));
}

/// Writes the front of `batch` as unmasked text frames (RFC 6455, 5.2), as far as the
/// socket takes them now: small frames gathered in the thread's buffer into one write, a
/// large one as header and payload slices. Frames written are popped; a frame the socket
/// took only part of is popped too and returned with how many of its bytes went out.
/// Stops before a frame over [`FRAGMENT_BYTES`]. `WouldBlock` when the socket took nothing.
fn write_frames(
    stream: &TcpStream,
    batch: &mut VecDeque<EncodedFrame>,
) -> std::io::Result<Option<(EncodedFrame, usize)>> {
    let mut header = [0u8; MAX_HEADER];
    let Some(front) = batch.front() else {
        return Ok(None);
    };
    let len = text_frame_header(front.len(), &mut header);
    let mut n = if len + front.len() > GATHER_BYTES {
        stream
            .try_write_vectored(&[IoSlice::new(&header[..len]), IoSlice::new(front.as_bytes())])?
    } else {
        GATHER.with_borrow_mut(|buf| {
            buf.clear();
            for frame in batch.iter() {
                let len = text_frame_header(frame.len(), &mut header);
                if buf.len() + len + frame.len() > GATHER_BYTES {
                    break;
                }
                buf.extend_from_slice(&header[..len]);
                buf.extend_from_slice(frame.as_bytes());
            }
            stream.try_write(buf)
        })?
    };
    while n > 0 {
        let frame = batch
            .pop_front()
            .expect("written bytes belong to queued frames");
        let whole = header_len(frame.len()) + frame.len();
        if n < whole {
            return Ok(Some((frame, n)));
        }
        n -= whole;
    }
    Ok(None)
}

/// A frame's header and payload without their first `skip` bytes (already written).
fn skip_parts<'a>(head: &'a [u8], body: &'a [u8], skip: usize) -> (&'a [u8], &'a [u8]) {
    if skip < head.len() {
        (&head[skip..], body)
    } else {
        (&[], &body[skip - head.len()..])
    }
}

/// The longest server frame header: no mask, a 64-bit length.
const MAX_HEADER: usize = 10;

fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => MAX_HEADER,
    }
}

/// Writes a final, unmasked text frame's header for `payload` bytes (RFC 6455, 5.2);
/// returns its length.
fn text_frame_header(payload: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x81; // FIN, text
    match header_len(payload) {
        2 => out[1] = payload as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    header_len(payload)
}

/// Close reasons must fit a control frame (125 bytes with the code).
fn truncate_reason(reason: &str) -> &str {
    crate::protocol::truncate_utf8(reason, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of every header size, some over the fragment size, written through a small
    /// send buffer (so writes are partial and wait), reach a WebSocket client whole and
    /// in order.
    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_through_partial_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Up to 65,000 bytes: written directly (headers of 2, 4 bytes); 200,000: fragments.
        let sizes = [
            0, 1, 125, 126, 127, 1_000, 30_000, 65_000, 60_000, 65_000, 65_000, 200_000,
        ];
        let frames: Vec<EncodedFrame> = (0..240)
            .map(|i| {
                let n = sizes[i % sizes.len()];
                let mut text = format!("{i}:");
                text.extend(std::iter::repeat_n('x', n));
                EncodedFrame::from_json(text)
            })
            .collect();
        let expected: Vec<String> = frames.iter().map(|f| f.as_str().to_string()).collect();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            socket2::SockRef::from(&stream)
                .set_send_buffer_size(16_384)
                .unwrap();
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let mut transport = WsTransport::new(ws);
            let mut batch: VecDeque<EncodedFrame> = frames.into();
            transport.send(&mut batch).await.unwrap();
            assert!(batch.is_empty());
            transport
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        socket2::SockRef::from(&stream)
            .set_recv_buffer_size(32_768)
            .unwrap();
        let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .unwrap();
        let read = async {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                match client.next().await.unwrap().unwrap() {
                    Message::Text(text) => got.push(text.to_string()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap();
        assert!(got == expected, "frames arrived changed or out of order");
        let _transport = server.await.unwrap();
    }

    /// A write abandoned half way through a frame (a client that stopped reading) is
    /// finished before the close frame: the client reads whole frames, then the close.
    #[tokio::test]
    async fn a_close_after_an_abandoned_write_follows_whole_frames() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frames: Vec<EncodedFrame> = (0..2_000)
            .map(|i| EncodedFrame::from_json(format!("{i}:{}", "z".repeat(999 + i % 7))))
            .collect();
        let expected: Vec<String> = frames.iter().map(|f| f.as_str().to_string()).collect();
        let (abandoned_tx, abandoned_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            socket2::SockRef::from(&stream)
                .set_send_buffer_size(16_384)
                .unwrap();
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let mut transport = WsTransport::new(ws);
            let mut batch: VecDeque<EncodedFrame> = frames.into();
            // The client reads nothing yet: 2 MB cannot all go out, so this is abandoned.
            let send = transport.send(&mut batch);
            assert!(
                tokio::time::timeout(Duration::from_millis(200), send)
                    .await
                    .is_err()
            );
            abandoned_tx.send(transport.partial.is_some()).unwrap();
            transport
                .close(CloseCode::SlowConsumer, "slow consumer")
                .await;
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket2::SockRef::from(&stream)
            .set_recv_buffer_size(32_768)
            .unwrap();
        let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .unwrap();
        let mid_frame = tokio::time::timeout(Duration::from_secs(10), abandoned_rx)
            .await
            .unwrap()
            .unwrap();
        let read = async {
            let mut got = Vec::new();
            loop {
                match client.next().await {
                    Some(Ok(Message::Text(text))) => got.push(text.to_string()),
                    Some(Ok(Message::Close(Some(close)))) => return (got, u16::from(close.code)),
                    other => panic!("expected whole frames, then the close: {other:?}"),
                }
            }
        };
        let (got, code) = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        assert_eq!(code, 4009);
        assert!(
            !got.is_empty() && got.len() < expected.len(),
            "{} frames",
            got.len()
        );
        assert!(
            got[..] == expected[..got.len()],
            "frames arrived changed or out of order"
        );
        assert!(
            mid_frame,
            "the write stopped between frames: this case was not tested"
        );
        server.await.unwrap();
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let r = truncate_reason(&long);
        assert!(r.len() <= 120 && long.starts_with(r));
    }
}
