//! The WebTransport side of the test client: a real `web-transport-quinn` session to the
//! broker's QUIC listener, trusting the development certificate by its hash (as a browser
//! does with `serverCertificateHashes`), one stream of newline-delimited JSON, and the
//! datagrams beside it.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;
use web_transport_quinn::{RecvStream, SendStream, Session, SessionError, WebTransportError};

use super::wait::{WAIT, deadline};

pub struct WtWire {
    pub session: Session,
    send: SendStream,
    recv: RecvStream,
    /// Bytes read and not yet a whole line.
    buf: Vec<u8>,
}

/// Why a WebTransport session did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The CONNECT request was refused (an HTTP status).
    Refused(String),
    Other(String),
}

/// The development certificate's hash and the URL, from `GET /dev/cert-hash`.
pub async fn cert_hash(ws_addr: SocketAddr) -> (Vec<u8>, String) {
    let (status, body) = super::broker::http_get(ws_addr, "/dev/cert-hash").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["algorithm"], "sha-256", "{v}");
    let hex = v["hash"].as_str().unwrap();
    let hash = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (hash, v["url"].as_str().unwrap().to_string())
}

impl WtWire {
    /// A session to `path` on the broker's QUIC listener, with `origin` if given.
    pub async fn open(
        broker: &super::TestBroker,
        path: &str,
        origin: Option<&str>,
    ) -> Result<Self, OpenError> {
        let (hash, url) = cert_hash(broker.ws_addr).await;
        let url: url::Url = url.replace("/wt", path).parse().unwrap();
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash])
            .map_err(|e| OpenError::Other(e.to_string()))?;
        let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
        if let Some(origin) = origin {
            request
                .headers
                .insert(http::header::ORIGIN, origin.parse().unwrap());
        }
        let session = tokio::time::timeout(WAIT, client.connect(request))
            .await
            .expect("WebTransport connect timed out")
            .map_err(|e| match format!("{e:?}") {
                s if s.contains("status") || s.contains("Status") => OpenError::Refused(s),
                s => OpenError::Other(s),
            })?;
        let (send, recv) = session
            .open_bi()
            .await
            .map_err(|e| OpenError::Other(e.to_string()))?;
        Ok(Self {
            session,
            send,
            recv,
            buf: Vec::new(),
        })
    }

    pub async fn send_line(&mut self, text: &str) {
        let mut line = text.as_bytes().to_vec();
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// Writes bytes as they are (tests of framing).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("stream write");
    }

    /// The next frame by `deadline`; `None` when the stream ended or the session closed.
    pub async fn read_frame(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                // (A line is whole or the stream is reset before its end.)
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(
                    serde_json::from_slice(&line[..end])
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}")),
                );
            }
            let chunk = tokio::time::timeout_at(deadline, self.recv.read_chunk(usize::MAX, true))
                .await
                .expect("no frame from the server in time");
            match chunk {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The session's close code and reason (from the `CLOSE_WEBTRANSPORT_SESSION`
    /// capsule), by `deadline`.
    pub async fn close_code(&mut self, deadline: Instant) -> (Option<u16>, String) {
        let closed = tokio::time::timeout_at(deadline, self.session.closed())
            .await
            .expect("session did not close in time");
        match closed {
            SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
                (u16::try_from(code).ok(), reason)
            }
            other => (None, other.to_string()),
        }
    }

    /// The next datagram, as JSON.
    pub async fn datagram(&mut self) -> Value {
        let bytes: Bytes = tokio::time::timeout_at(deadline(), self.session.read_datagram())
            .await
            .expect("no datagram in time")
            .expect("session open");
        serde_json::from_slice(&bytes).unwrap()
    }
}
