//! WebTransport: HTTP/3 extended CONNECT to `/wt` on the QUIC listener (`[quic]`), one
//! bidirectional stream of newline-delimited JSON frames, and unreliable datagrams for
//! volatile namespaces.
//!
//! Built on `web-transport-quinn` (quinn plus the HTTP/3 and WebTransport framing; see
//! ARCHITECTURE.md for why this layer): one WebTransport session per QUIC connection, and
//! a session close carried in the `CLOSE_WEBTRANSPORT_SESSION` capsule, so a browser's
//! `WebTransport.closed` shows the same close code and reason a WebSocket would.
//!
//! The edge is the transport-free one (`edge`): a handshake slot when a QUIC connection
//! arrives, the CONNECT request checked like a WebSocket upgrade (rate, path, `Origin`,
//! token in the URL), everything within the handshake deadline, then the session.

pub mod config;
pub mod tls;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;
use web_transport_quinn::{RecvStream, SendStream, Session};

use crate::edge::{self, Checked, RequestHead};
use crate::limits::Admission;
use crate::node::Node;
use crate::protocol::{CloseCode, EncodedFrame};
use crate::transport::{Datagrams, Inbound, Keepalive, Transport, TransportKind, WriteError};
use config::QuicConfig;

/// The path of the CONNECT request.
pub const PATH: &str = "/wt";

/// How long a refused CONNECT's connection stays open for the answer to arrive.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Binds the QUIC listener when it can run: `[quic]` enabled and a certificate (the
/// configured files, or with `dev` a self-signed one). Off (`None`) is said in the log;
/// a certificate that cannot be read fails the start.
pub fn listen(
    config: &QuicConfig,
    dev: bool,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<(quinn::Endpoint, tls::Identity)>> {
    if !config.enabled {
        tracing::info!("WebTransport is off (quic.enabled = false)");
        return Ok(None);
    }
    let Some(identity) = tls::Identity::load(config, dev, data_dir)? else {
        tracing::warn!(
            "WebTransport is off: no certificate (set quic.cert_file and quic.key_file, or run with --dev for a self-signed development certificate)"
        );
        return Ok(None);
    };
    let server = identity.server_config(config)?;
    let socket = udp_socket(config.addr, config.udp_buffer_bytes)
        .with_context(|| format!("cannot listen on quic.addr {} (UDP)", config.addr))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .with_context(|| format!("cannot listen on quic.addr {} (UDP)", config.addr))?;
    if identity.source == tls::CertSource::DevSelfSigned {
        tracing::warn!(
            sha256 = %tls::hex(&identity.sha256()),
            "!!! DEVELOPMENT CERTIFICATE for WebTransport: self-signed, valid 13 days (kept in data_dir); browsers take it only through serverCertificateHashes (GET /dev/cert-hash). Configure quic.cert_file and quic.key_file before exposing the broker !!!"
        );
    }
    Ok(Some((endpoint, identity)))
}

/// A UDP socket with larger buffers (best effort: the kernel caps them).
pub fn udp_socket(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, buffer_bytes);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, buffer_bytes);
    Ok(socket)
}

/// Accepts QUIC connections until shutdown; each runs in its own task on the node's
/// tracker.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let remote = incoming.remote_address();
                    match edge::begin(&node, remote) {
                        Some(admission) => {
                            node.tasks.spawn(connection(incoming, remote, node.clone(), admission));
                        }
                        // Refused before any handshake work.
                        None => incoming.refuse(),
                    }
                }
                None => break,
            }
        }
    }
    // New handshakes are refused from here on; open sessions drain with 1012.
    endpoint.set_server_config(None);
}

/// Why an opening did not become a session (logged at debug: a client's doing).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("QUIC handshake failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("WebTransport handshake failed: {0}")]
    Handshake(#[from] web_transport_quinn::ServerError),
    #[error("the client opened no stream: {0}")]
    NoStream(#[from] web_transport_quinn::SessionError),
    #[error("refused with {status}: {message}")]
    Refused { status: u16, message: String },
}

/// One QUIC connection: the QUIC and HTTP/3 handshakes, the CONNECT request's checks,
/// the client's stream, then the session — all but the session within the handshake
/// deadline.
async fn connection(
    incoming: quinn::Incoming,
    remote: SocketAddr,
    node: Arc<Node>,
    admission: Admission,
) {
    let opened = Instant::now();
    let Some(slot) = edge::slot(admission, edge::deadline(&node, opened)).await else {
        tracing::debug!(remote = %remote, "No handshake slot came free in time; refused");
        incoming.refuse();
        return;
    };
    let opening = Box::pin(open(incoming, remote, &node));
    let (transport, checked) =
        match tokio::time::timeout_at(edge::deadline(&node, opened), opening).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::debug!(remote = %remote, error = %e, "WebTransport opening failed");
                return;
            }
            Err(_) => {
                tracing::debug!(remote = %remote, "WebTransport opening timed out");
                return;
            }
        };
    edge::run(node, transport, remote, opened, slot, checked).await;
}

async fn open(
    incoming: quinn::Incoming,
    remote: SocketAddr,
    node: &Node,
) -> Result<(WtTransport, Checked), OpenError> {
    let conn = incoming.accept()?.await?;
    let request = web_transport_quinn::Request::accept(conn).await?;
    let header =
        |name: http::HeaderName| request.headers.get(name).map(|v| v.to_str().unwrap_or(""));
    let head = RequestHead {
        path: request.url.path(),
        query: request.url.query(),
        origin: header(http::header::ORIGIN),
        authorization: header(http::header::AUTHORIZATION),
    };
    let checked = match edge::check_request(node, remote, &head, PATH) {
        Ok(checked) => checked,
        Err(refusal) => {
            let status =
                http::StatusCode::from_u16(refusal.status).unwrap_or(http::StatusCode::BAD_REQUEST);
            let conn = request.conn().clone();
            let _ = request.reject(status).await;
            // Let the answer arrive before the connection goes (the client closes it).
            let _ = tokio::time::timeout(REFUSAL_LINGER, conn.closed()).await;
            return Err(OpenError::Refused {
                status: refusal.status,
                message: refusal.message,
            });
        }
    };
    let session = request.ok().await?;
    let (send, recv) = session.accept_bi().await?;
    Ok((
        WtTransport::new(session, send, recv, node.settings.max_frame_bytes),
        checked,
    ))
}

/// A WebTransport session's one stream, as a [`Transport`].
pub struct WtTransport {
    session: Session,
    send: SendStream,
    recv: RecvStream,
    lines: Lines,
    /// Reused for each batch: the frames' shared bytes and their newlines.
    chunks: Vec<Bytes>,
    /// A write was abandoned part-way (a stalled client cut off): the stream ends inside
    /// a line, so nothing more may be written to it.
    torn: bool,
    readable: Arc<Readable>,
    /// `readable` as the waker quinn keeps for the stream (made once).
    read_waker: std::task::Waker,
    datagrams: Arc<WtDatagrams>,
}

const NEWLINE: Bytes = Bytes::from_static(b"\n");

impl WtTransport {
    fn new(session: Session, send: SendStream, recv: RecvStream, max_frame: usize) -> Self {
        // Asked at once the first time.
        let readable = Arc::new(Readable {
            news: AtomicBool::new(true),
            task: Default::default(),
        });
        Self {
            datagrams: Arc::new(WtDatagrams {
                session: session.clone(),
            }),
            session,
            send,
            recv,
            lines: Lines::new(max_frame),
            chunks: Vec::new(),
            torn: false,
            read_waker: std::task::Waker::from(readable.clone()),
            readable,
        }
    }
}

/// The batch as stream chunks: small frames copied together with their newlines into
/// one chunk (quinn keeps and walks every chunk until it is acknowledged, and encrypts
/// the bytes into each connection's packets anyway, so a few hundred bytes copied cost
/// less than two chunks a frame); a large frame goes as its own shared bytes, uncopied.
fn gather(batch: &mut VecDeque<EncodedFrame>, chunks: &mut Vec<Bytes>) {
    let mut small = BytesMut::new();
    for frame in batch.drain(..) {
        if frame.len() < COPY_BELOW {
            if small.is_empty() {
                small.reserve(GATHER_BYTES.max(frame.len() + 1));
            }
            small.extend_from_slice(frame.as_bytes());
            small.extend_from_slice(b"\n");
            if small.len() >= GATHER_BYTES {
                chunks.push(small.split().freeze());
            }
            continue;
        }
        if !small.is_empty() {
            chunks.push(small.split().freeze());
        }
        chunks.push(frame.into_bytes());
        chunks.push(NEWLINE);
    }
    if !small.is_empty() {
        chunks.push(small.freeze());
    }
}

/// Frames under this size are copied into a gathered chunk.
const COPY_BELOW: usize = 4 << 10;
/// A gathered chunk is cut at about this size.
const GATHER_BYTES: usize = 16 << 10;

/// Newline-delimited frames out of a stream's chunks (the broker's reader, and the
/// bench client's).
pub struct Lines {
    /// What the last read returned and no line has taken yet.
    unread: Bytes,
    /// An incomplete line (empty, without capacity, between lines).
    partial: BytesMut,
    max_frame: usize,
}

impl Lines {
    pub fn new(max_frame: usize) -> Self {
        Self {
            unread: Bytes::new(),
            partial: BytesMut::new(),
            max_frame,
        }
    }

    /// A chunk read from the stream (only once [`Lines::next_line`] answered `None`).
    pub fn feed(&mut self, chunk: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = chunk;
    }

    /// The next complete line, without copying when it lies in one chunk; a line (or an
    /// incomplete one) over the limit is [`Inbound::TooLarge`]. Empty lines and a `\r`
    /// before the `\n` are ignored.
    pub fn next_line(&mut self) -> Option<Inbound> {
        while !self.unread.is_empty() {
            let Some(end) = self.unread.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(&self.unread);
                self.unread.clear();
                break;
            };
            let mut line = if self.partial.is_empty() {
                self.unread.split_to(end)
            } else {
                self.partial.extend_from_slice(&self.unread[..end]);
                self.unread.advance(end);
                std::mem::take(&mut self.partial).freeze()
            };
            self.unread.advance(1);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.len() > self.max_frame {
                return Some(Inbound::TooLarge);
            }
            if !line.is_empty() {
                return Some(Inbound::Text(line));
            }
        }
        (self.partial.len() > self.max_frame).then_some(Inbound::TooLarge)
    }
}

impl WtTransport {
    /// Reads a chunk, asking quinn only once it said the stream has news: the session
    /// polls `recv` each time it wakes to write, and each ask takes the connection's
    /// lock, which its driver wants for sending.
    fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Option<quinn::Chunk>, web_transport_quinn::ReadError>> {
        self.readable.task.register(cx.waker());
        if !self.readable.news.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        // Quinn keeps this waker with the stream (not in the read future, so dropping a
        // pending read loses nothing; a chunk is either returned whole or not taken).
        let read = std::pin::pin!(self.recv.read_chunk(usize::MAX, true));
        let polled = read.poll(&mut std::task::Context::from_waker(&self.read_waker));
        if polled.is_ready() {
            // More may wait behind this chunk: only a pending read leaves quinn the
            // waker to say so.
            self.readable.news.store(true, Ordering::Release);
        }
        polled
    }
}

/// Set when quinn wakes the stream's reader (data, a finish, a reset, the connection's
/// end); wakes the session.
struct Readable {
    news: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.news.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Transport for WtTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebTransport
    }

    fn keepalive(&self) -> Keepalive {
        Keepalive::Transport
    }

    fn gathers(&self) -> bool {
        true
    }

    fn datagrams(&self) -> Option<Arc<dyn Datagrams>> {
        Some(self.datagrams.clone())
    }

    async fn recv(&mut self) -> Inbound {
        loop {
            if let Some(inbound) = self.lines.next_line() {
                return inbound;
            }
            match std::future::poll_fn(|cx| self.poll_chunk(cx)).await {
                Ok(Some(chunk)) => self.lines.feed(chunk.bytes),
                // The client finished its side of the stream, or the session is gone.
                Ok(None) | Err(_) => return Inbound::Closed,
            }
        }
    }

    async fn send(&mut self, batch: &mut VecDeque<EncodedFrame>) -> Result<(), WriteError> {
        if self.torn {
            batch.clear();
            return Err(WriteError("an earlier write was abandoned part-way".into()));
        }
        self.chunks.clear();
        gather(batch, &mut self.chunks);
        // Torn until written whole: the session may drop this future while it waits.
        self.torn = true;
        let written = self.send.write_all_chunks(&mut self.chunks).await;
        self.torn = false;
        self.chunks.clear();
        written.map_err(|e| WriteError(e.to_string()))
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        // QUIC keeps the connection alive itself (`quic.keep_alive_ms`).
        Ok(())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        // What was written (the `disconnect` push) reaches the client before the close:
        // finish the stream and wait until it is acknowledged, then the capsule. A torn
        // stream is reset instead (its last line is cut): the capsule says why.
        if self.torn {
            let _ = self.send.reset(u32::from(code.code()));
        } else {
            let _ = self.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send.stopped()).await;
        }
        self.session.close(
            u32::from(code.code()),
            crate::protocol::truncate_utf8(reason, 1000).as_bytes(),
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.session.closed()).await;
    }
}

/// Volatile frames as unreliable datagrams, sent from the publishing thread: never
/// queued behind the stream.
struct WtDatagrams {
    session: Session,
}

impl Datagrams for WtDatagrams {
    fn send(&self, frame: &EncodedFrame) -> bool {
        // Larger than this path takes (or datagrams off): the caller uses the stream.
        if frame.len() > self.session.max_datagram_size() {
            return false;
        }
        // A full buffer drops the oldest datagram: they are worthless when late.
        self.session.send_datagram(frame.bytes()).is_ok()
    }
}

#[cfg(test)]
mod tests;
