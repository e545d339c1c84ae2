//! A WebSocket client written by hand over a raw TCP socket, for what a well-behaved
//! client library would hide (unanswered pings, the bytes of the close).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::wait::{WAIT, deadline};

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
        self.send_raw(&Self::frame(&frame)).await;
    }

    /// The bytes of a text frame carrying `frame` (masked with the zero mask), so several
    /// can go in one write.
    pub fn frame(frame: &Value) -> Vec<u8> {
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
        out
    }

    /// Writes bytes as they are: a hand-built frame, right or wrong.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until the server's close frame and returns its code (`None`: the connection
    /// ended without one). Text frames and pings before it are skipped.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = deadline();
        while let Some((opcode, payload)) = self.next_frame(deadline).await {
            if opcode == 0x8 {
                return payload
                    .get(..2)
                    .map(|code| u16::from_be_bytes([code[0], code[1]]));
            }
        }
        None
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
