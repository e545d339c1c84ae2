//! A WebSocket connection after the upgrade: reads and writes frames on the socket
//! itself (`codec`), through per-thread buffers, so an idle connection holds no buffer
//! at all (tungstenite kept a read buffer and a write buffer in every connection).
//!
//! Reads: a read takes what the socket has (up to `limits.read_buffer_bytes`) into the
//! worker thread's buffer (tokio's `poll_read`, which marks the socket drained after a
//! short read, so no read is made only to find nothing); those bytes are copied once
//! into the connection's `read` (exactly their length), and frames are split off it
//! without further copies. `read` is empty, holding nothing, once every frame in it was
//! handled.
//!
//! Writes: queued frames are framed here and gathered in the thread's buffer, one write
//! per `limits.write_buffer_bytes` (a frame larger than that goes out as header and
//! payload slices, without a copy). A frame the socket took only part of is finished
//! before anything else is written, a pong or a close included, even when the write that
//! began it was abandoned, so the stream never holds half a frame.
//!
//! Direct writes: the write side (the partly written frame, whether a close went) sits
//! behind a lock shared with the connection's queue, so a publishing thread can write a
//! frame on the socket itself while traffic is light ([`DirectWrite`]). Every write,
//! direct or not, happens under that lock and finishes a partly written frame first.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{self, FrameError, MAX_HEADER, Opcode};
use crate::clamp_u32;
use crate::protocol::{CloseCode, EncodedFrame};
use crate::transport::{Direct, DirectWrite, Inbound, Transport, TransportKind, WriteError};

thread_local! {
    /// The worker thread's read buffer (grown to `limits.read_buffer_bytes` on first use).
    static READ: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The worker thread's write buffer, where queued frames are gathered.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct WsTransport {
    stream: TcpStream,
    /// Bytes read but not handled yet: the rest of a read that brought several frames,
    /// or the start of one still arriving.
    read: BytesMut,
    /// A fragmented message being put together (rare): its bytes, and whether it is text.
    /// Boxed: rare, and its room would sit in every connection (idle ones too).
    message: Option<Box<(BytesMut, bool)>>,
    /// The write side, shared with the connection's queue (see the module doc).
    writes: Arc<Writes>,
    /// The largest message taken (`limits.max_frame_bytes`).
    max_message: u32,
    read_bytes: u32,
    write_bytes: u32,
    /// Nothing more comes from the socket (its end, or a read failed); frames already
    /// read are still handled.
    eof: bool,
    /// Nothing more is handled: the client closed, or sent what cannot be read past.
    ended: bool,
}

/// A directly written frame up to this size (header included) is copied into one buffer.
const DIRECT_COPY_MAX: usize = 16 * 1024;

/// The socket's write side: whoever writes holds `side`.
struct Writes {
    /// The socket, for direct writes (valid while `side.open`).
    fd: RawFd,
    side: Mutex<WriteSide>,
}

struct WriteSide {
    /// See the module doc. Boxed: rare, and this sits in every connection.
    partial: Option<Box<Partial>>,
    /// A close frame went out: nothing follows it, not even a pong (RFC 6455, 5.5.1).
    close_sent: bool,
    /// The transport still holds the socket: it clears this, under the lock, before the
    /// socket is closed, so a direct write never uses a descriptor gone or reused.
    open: bool,
}

impl WriteSide {
    /// Writes what the socket takes now of the partly written frame; `Ok(true)` once
    /// none is left.
    fn write_partial_now(&mut self, stream: &TcpStream) -> io::Result<bool> {
        let Some(frame) = self.partial.as_mut() else {
            return Ok(true);
        };
        let (head, body) = frame.rest();
        frame.written += stream.try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
        if frame.written < frame.len() {
            return Ok(false);
        }
        self.partial = None;
        Ok(true)
    }
}

impl Writes {
    /// Runs `write` with the write side and the socket, when a direct write may go now:
    /// nobody else is writing (a session writing a ping or a pong holds the lock: the
    /// frames queue instead), the socket is open, no close went, no frame is half written.
    // The one unsafe line borrows the socket's descriptor from another thread; see its
    // SAFETY note.
    #[allow(unsafe_code)]
    fn with_socket(
        &self,
        write: impl FnOnce(&mut WriteSide, &socket2::SockRef<'_>) -> Direct,
    ) -> Direct {
        let Some(mut side) = self.side.try_lock() else {
            return Direct::Not;
        };
        if !side.open || side.close_sent || side.partial.is_some() {
            return Direct::Not;
        }
        // SAFETY: `open` is true and we hold the lock, so the transport has not closed
        // the socket: the descriptor is this connection's.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        write(&mut side, &socket2::SockRef::from(&fd))
    }
}

impl DirectWrite for Writes {
    fn try_write(&self, frame: &EncodedFrame) -> Direct {
        self.with_socket(|side, socket| {
            let whole = codec::header_len(frame.len()) + frame.len();
            match send_gathered(socket, std::iter::once(frame), DIRECT_COPY_MAX) {
                Ok(n) if n == whole => Direct::Written,
                Ok(n) if n > 0 => {
                    side.partial = Some(Box::new(Partial::begun(frame.bytes(), n)));
                    Direct::Begun
                }
                // A socket that would block, or failed: the writer finds out when it writes.
                _ => Direct::Not,
            }
        })
    }

    fn try_write_queued(&self, frames: &mut VecDeque<EncodedFrame>) -> Direct {
        self.with_socket(|side, socket| {
            while !frames.is_empty() {
                match write_front(side, socket, frames, DIRECT_COPY_MAX) {
                    Ok(n) if n > 0 && side.partial.is_none() => {}
                    Ok(n) if n > 0 => return Direct::Begun,
                    // As in `try_write`.
                    _ => return Direct::Not,
                }
            }
            Direct::Written
        })
    }
}

/// A frame partly written: its header, its payload, and how many bytes of the two went.
struct Partial {
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
    written: usize,
}

impl Partial {
    fn new(opcode: Opcode, payload: Bytes) -> Self {
        let mut header = [0u8; MAX_HEADER];
        let header_len = codec::header(opcode, payload.len(), &mut header) as u8;
        Self {
            header,
            header_len,
            payload,
            written: 0,
        }
    }

    /// A text frame of which the socket took the first `written` bytes.
    fn begun(payload: Bytes, written: usize) -> Self {
        Self {
            written,
            ..Self::new(Opcode::Text, payload)
        }
    }

    fn len(&self) -> usize {
        self.header_len as usize + self.payload.len()
    }

    /// What is left to write, as two slices.
    fn rest(&self) -> (&[u8], &[u8]) {
        let head = &self.header[..self.header_len as usize];
        if self.written < head.len() {
            (&head[self.written..], &self.payload)
        } else {
            (&[], &self.payload[self.written - head.len()..])
        }
    }
}

fn io_err(e: io::Error) -> WriteError {
    WriteError(e.to_string())
}

impl WsTransport {
    /// A connection whose upgrade is done (nothing of it is left unread).
    pub fn new(stream: TcpStream, settings: &crate::node::Settings) -> Self {
        let writes = Arc::new(Writes {
            fd: stream.as_raw_fd(),
            side: Mutex::new(WriteSide {
                partial: None,
                close_sent: false,
                open: true,
            }),
        });
        Self {
            stream,
            read: BytesMut::new(),
            message: None,
            writes,
            // (u32: this sits in every connection; the config's bounds fit.)
            max_message: clamp_u32(settings.max_frame_bytes),
            read_bytes: clamp_u32(settings.read_buffer_bytes),
            write_bytes: clamp_u32(settings.write_buffer_bytes.max(4_096)),
            eof: false,
            ended: false,
        }
    }

    /// The next thing the client sent that is already here, if any.
    fn next_inbound(&mut self) -> Option<Inbound> {
        if self.ended {
            return None;
        }
        loop {
            let frame = match codec::next_frame(&mut self.read, self.max_message as usize) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if self.read.is_empty() {
                        // Give the allocation back (the frames split off may still use it).
                        self.read = BytesMut::new();
                    }
                    return None;
                }
                Err(e) => {
                    self.ended = true;
                    return Some(match e {
                        FrameError::TooLarge => Inbound::TooLarge,
                        FrameError::Protocol(why) => {
                            Inbound::Invalid(CloseCode::ProtocolError, why.into())
                        }
                    });
                }
            };
            let text = frame.opcode == Opcode::Text;
            match frame.opcode {
                Opcode::Text | Opcode::Binary if self.message.is_some() => {
                    return Some(self.broken("a new message began inside a fragmented one"));
                }
                Opcode::Text | Opcode::Binary if frame.fin => {
                    return Some(match text {
                        true => Inbound::Text(frame.payload.freeze()),
                        false => Inbound::Binary,
                    });
                }
                Opcode::Text | Opcode::Binary => {
                    self.message = Some(Box::new((frame.payload, text)));
                }
                Opcode::Continue => {
                    if self.message.is_none() {
                        return Some(
                            self.broken("a continuation frame with no message to continue"),
                        );
                    }
                    let (message, _) = &mut **self.message.as_mut().expect("checked above");
                    if message.len() + frame.payload.len() > self.max_message as usize {
                        self.ended = true;
                        return Some(Inbound::TooLarge);
                    }
                    message.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let (message, text) = *self.message.take().expect("checked above");
                        return Some(match text {
                            true => Inbound::Text(message.freeze()),
                            false => Inbound::Binary,
                        });
                    }
                }
                Opcode::Ping => {
                    self.queue_control(Opcode::Pong, frame.payload.freeze());
                    return Some(Inbound::Activity);
                }
                Opcode::Pong => return Some(Inbound::Activity),
                Opcode::Close => {
                    // Answer with its code (RFC 6455, 5.5.1), then the connection ends.
                    let code = frame.payload.freeze();
                    self.queue_control(Opcode::Close, code.slice(..code.len().min(2)));
                    self.ended = true;
                    return Some(Inbound::Closed);
                }
            }
        }
    }

    fn broken(&mut self, why: &'static str) -> Inbound {
        self.ended = true;
        Inbound::Invalid(CloseCode::ProtocolError, why.into())
    }

    /// Reads what the socket has (`Ok(0)` at its end), through tokio's `poll_read`: a read
    /// that returns less than it asked for marks the socket drained, so the next wait
    /// does not start with a read that finds nothing (`try_read` would make one).
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        READ.with_borrow_mut(|buf| {
            let read_bytes = self.read_bytes as usize;
            if buf.len() < read_bytes {
                buf.resize(read_bytes, 0);
            }
            let mut into = ReadBuf::new(&mut buf[..read_bytes]);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut into))?;
            let got = into.filled();
            if self.read.is_empty() {
                self.read = BytesMut::from(got);
            } else {
                self.read.extend_from_slice(got);
            }
            Poll::Ready(Ok(got.len()))
        })
    }

    /// Writes a control frame now if the socket takes it, else leaves it to be finished
    /// before the next write. A pong waiting behind a partly written frame is dropped:
    /// that happens only to a client that stopped reading. Nothing follows a close.
    fn queue_control(&mut self, opcode: Opcode, payload: Bytes) {
        let mut side = self.writes.side.lock();
        if side.partial.is_some() || side.close_sent {
            return;
        }
        side.close_sent = opcode == Opcode::Close;
        side.partial = Some(Box::new(Partial::new(opcode, payload)));
        match side.write_partial_now(&self.stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.eof = true,
        }
    }

    /// [`WriteSide::write_partial_now`], under the lock.
    fn write_partial_now(&mut self) -> io::Result<bool> {
        self.writes.side.lock().write_partial_now(&self.stream)
    }

    /// Writes the rest of a partly written frame (cancel-safe: what is left stays in
    /// `partial` until it is out).
    async fn finish_partial(&mut self) -> Result<(), WriteError> {
        loop {
            match self.write_partial_now() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable().await.map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    /// Waits until the socket takes bytes. (`poll_write_ready` keeps the waker in the
    /// socket's own slot: no waiter is added to and taken off a list at every wait, as
    /// `writable()` does; reads go through `poll_read` likewise.)
    async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.stream.poll_write_ready(cx)).await
    }

    /// Writes a control frame, waiting for the socket as needed.
    async fn write_control(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), WriteError> {
        self.finish_partial().await?;
        self.queue_control(opcode, payload);
        self.finish_partial().await
    }

    /// Writes the front of `batch` as far as the socket takes it now ([`write_front`]).
    /// `WouldBlock` when the socket took nothing; nothing is written while a frame is
    /// partly written (a direct write may have begun one: finish it first).
    fn write_frames(&mut self, batch: &mut VecDeque<EncodedFrame>) -> io::Result<()> {
        let mut side = self.writes.side.lock();
        if side.partial.is_some() {
            return Ok(());
        }
        write_front(&mut side, &self.stream, batch, self.write_bytes as usize).map(|_| ())
    }
}

/// Where [`write_front`] writes: the connection's tokio stream (its writer, which waits on
/// the stream's readiness), or the bare socket (a direct write from another thread).
trait Sink {
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl Sink for TcpStream {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.try_write_vectored(bufs)
    }
}

impl Sink for socket2::SockRef<'_> {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_vectored(bufs)
    }
}

/// Writes the front of `batch` in one write ([`send_gathered`]). Frames written are
/// popped; one the socket took only part of becomes `side.partial`. Returns the bytes
/// written; the caller made sure no frame is partly written already.
fn write_front(
    side: &mut WriteSide,
    sink: &impl Sink,
    batch: &mut VecDeque<EncodedFrame>,
    limit: usize,
) -> io::Result<usize> {
    debug_assert!(side.partial.is_none());
    let wrote = send_gathered(sink, batch.iter(), limit)?;
    let mut n = wrote;
    while n > 0 {
        let frame = batch
            .pop_front()
            .expect("written bytes belong to queued frames");
        let whole = codec::header_len(frame.len()) + frame.len();
        if n < whole {
            side.partial = Some(Box::new(Partial::begun(frame.bytes(), n)));
            break;
        }
        n -= whole;
    }
    Ok(wrote)
}

/// Sends the first of `frames` and as many after it as fit in `limit` bytes, framed, in
/// one write: small frames gathered in the thread's buffer (a plain `send` costs less
/// than `sendmsg` with many slices), a first frame larger than `limit` alone as header
/// and payload slices, without a copy. Returns the bytes the socket took.
fn send_gathered<'a>(
    sink: &impl Sink,
    frames: impl IntoIterator<Item = &'a EncodedFrame>,
    limit: usize,
) -> io::Result<usize> {
    let mut frames = frames.into_iter().peekable();
    let Some(first) = frames.peek() else {
        return Ok(0);
    };
    let mut header = [0u8; MAX_HEADER];
    if codec::header_len(first.len()) + first.len() > limit {
        let len = codec::header(Opcode::Text, first.len(), &mut header);
        return sink
            .write_vectored(&[IoSlice::new(&header[..len]), IoSlice::new(first.as_bytes())]);
    }
    GATHER.with_borrow_mut(|buf| {
        buf.clear();
        for frame in frames {
            let len = codec::header(Opcode::Text, frame.len(), &mut header);
            if buf.len() + len + frame.len() > limit {
                break;
            }
            buf.extend_from_slice(&header[..len]);
            buf.extend_from_slice(frame.as_bytes());
        }
        sink.write(buf)
    })
}

impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        Some(self.writes.clone())
    }

    fn parks(&self) -> bool {
        true
    }

    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // What was read is handled before a session parks (its `recv` was pending), so
        // only the socket can bring more. An error is for `recv` to find.
        self.stream.poll_read_ready(cx).map(|_| ())
    }

    async fn recv(&mut self) -> Inbound {
        loop {
            if let Some(inbound) = self.next_inbound() {
                return inbound;
            }
            if self.ended || self.eof {
                return Inbound::Closed;
            }
            // Cancel-safe: what a read returns is kept before it returns.
            match std::future::poll_fn(|cx| self.poll_read_some(cx)).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, batch: &mut VecDeque<EncodedFrame>) -> Result<(), WriteError> {
        loop {
            self.finish_partial().await?;
            if batch.is_empty() {
                return Ok(());
            }
            match self.write_frames(batch) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable().await.map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        self.write_control(Opcode::Ping, Bytes::new()).await
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let reason = crate::protocol::truncate_utf8(reason, 120);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.code().to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        if self
            .write_control(Opcode::Close, payload.into())
            .await
            .is_err()
        {
            return;
        }
        // Give the client a moment to answer the close, so it is not cut off by a reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !matches!(self.recv().await, Inbound::Closed) {}
        })
        .await;
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        // Before the socket closes with `stream`: no direct write uses it from now on.
        self.writes.side.lock().open = false;
    }
}

#[cfg(test)]
mod tests;
