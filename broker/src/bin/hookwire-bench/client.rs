//! One client connection: dial from a chosen 127.0.0.x source address, upgrade to
//! WebSocket (or open a WebTransport session and its stream), `connect` (and
//! `subscribe`), then, for subscribers, count what arrives.
//!
//! Failures are sorted into classes (`emfile`, `eaddrnotavail`, `refused`, `timeout`, …)
//! because the point of a connection benchmark is often to find which cap is hit first.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use anyhow::Context;

use crate::stats::{RecvStats, now_us};

/// A client connection, over either transport (see `conn`).
pub type Ws = crate::conn::Conn;

/// Token lifetime: longer than any bench run, so no session expires mid-run.
const TOKEN_TTL: Duration = Duration::from_secs(4 * 3600);

/// How every client of a worker reaches the broker.
#[derive(Clone)]
pub struct Dial {
    pub broker: SocketAddr,
    pub url: String,
    pub secret: Vec<u8>,
    pub config: WebSocketConfig,
    pub timeout: Duration,
    /// Set: clients speak WebTransport instead (`--transport webtransport`).
    pub wt: Option<WtDial>,
}

/// The largest UDP payload a bench client takes (the broker sends up to its
/// `quic.max_udp_payload_bytes`; loopback carries 64 KiB).
const MAX_UDP_PAYLOAD: u16 = 65_527;

/// UDP sockets (QUIC endpoints) per worker, taken in turn by its sessions: a browser
/// has a socket per connection; one socket for hundreds of sessions overflows its
/// receive buffer under fan-out, and QUIC then backs off and resends.
const ENDPOINTS: usize = 4;

/// How clients reach the QUIC listener: a few endpoints per worker, shared by its
/// sessions in turn.
#[derive(Clone)]
pub struct WtDial {
    clients: Vec<web_transport_quinn::Client>,
    next: std::rc::Rc<std::cell::Cell<usize>>,
    pub url: url::Url,
}

impl WtDial {
    /// Clients that trust the certificate with this SHA-256 (`/dev/cert-hash`), each on
    /// its own UDP socket with 4 MiB buffers.
    pub fn new(url: &str, cert_sha256: Vec<u8>) -> anyhow::Result<Self> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(crate::conn::PinnedCert {
                sha256: cert_sha256,
                provider,
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
        let crypto = std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?);
        let mut clients = Vec::with_capacity(ENDPOINTS);
        for _ in 0..ENDPOINTS {
            let socket = hookwire::transport::wt::udp_socket(([127, 0, 0, 1], 0).into(), 4 << 20)?;
            let runtime = quinn::default_runtime().context("no runtime")?;
            let mut endpoint_config = quinn::EndpointConfig::default();
            endpoint_config.max_udp_payload_size(MAX_UDP_PAYLOAD)?;
            let endpoint = quinn::Endpoint::new(endpoint_config, None, socket, runtime)?;
            let config = quinn::ClientConfig::new(crypto.clone());
            clients.push(web_transport_quinn::Client::new(endpoint, config));
        }
        Ok(Self {
            clients,
            next: Default::default(),
            url: url.parse()?,
        })
    }

    /// The next session's client.
    pub fn client(&self) -> &web_transport_quinn::Client {
        let i = self.next.get();
        self.next.set((i + 1) % self.clients.len());
        &self.clients[i]
    }
}

/// A connection attempt that failed, with its class.
#[derive(Debug)]
pub struct ConnectError {
    pub class: &'static str,
    pub message: String,
}

impl ConnectError {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// Names the operating-system caps a benchmark is likely to hit.
fn io_error(stage: &str, e: &io::Error) -> ConnectError {
    let class = match e.raw_os_error() {
        Some(24) => "emfile",
        Some(23) => "enfile",
        Some(99) => "eaddrnotavail",
        Some(98) => "eaddrinuse",
        Some(111) => "refused",
        Some(104) => "reset",
        Some(110) => "timeout",
        _ => "io",
    };
    ConnectError::new(class, format!("{stage}: {e}"))
}

fn ws_error(stage: &str, e: &WsError) -> ConnectError {
    match e {
        WsError::Io(io) => io_error(stage, io),
        WsError::Http(resp) => {
            ConnectError::new("http", format!("{stage}: HTTP status {}", resp.status()))
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            ConnectError::new("closed", format!("{stage}: connection closed"))
        }
        other => ConnectError::new("handshake", format!("{stage}: {other}")),
    }
}

/// The `channels` claim that lets a client use `channel`: every channel of its namespace.
fn channel_claim(channel: &str) -> String {
    match channel.split_once(':') {
        Some((ns, _)) => format!("{ns}:*"),
        None => channel.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Opens one client as user `sub` and, with `subscribe`, subscribes it; the whole
/// attempt is bounded by `dial.timeout`.
pub async fn open(
    dial: &Dial,
    source: Ipv4Addr,
    sub: &str,
    channel: &str,
    subscribe: bool,
) -> Result<Ws, ConnectError> {
    let frame = subscribe.then(|| subscribe_frame(channel, None));
    open_with(dial, source, sub, channel, frame)
        .await
        .map(|(ws, _)| ws)
}

/// A `subscribe` frame with id 2, recovering from `(offset, epoch)` when given.
pub fn subscribe_frame(channel: &str, recover: Option<(u64, &str)>) -> String {
    match recover {
        None => format!(r#"{{"type":"subscribe","id":2,"channel":"{channel}"}}"#),
        Some((offset, epoch)) => format!(
            r#"{{"type":"subscribe","id":2,"channel":"{channel}","recover":{{"offset":{offset},"epoch":"{epoch}"}}}}"#
        ),
    }
}

/// Like [`open`], with the `subscribe` frame given (or none); answers the connection and
/// the text of the `subscribed` reply.
pub async fn open_with(
    dial: &Dial,
    source: Ipv4Addr,
    sub: &str,
    channel: &str,
    subscribe: Option<String>,
) -> Result<(Ws, Option<String>), ConnectError> {
    match tokio::time::timeout(
        dial.timeout,
        open_inner(dial, source, sub, channel, subscribe),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ConnectError::new(
            "timeout",
            format!(
                "no connected/subscribed reply within {} ms",
                dial.timeout.as_millis()
            ),
        )),
    }
}

async fn open_inner(
    dial: &Dial,
    source: Ipv4Addr,
    sub: &str,
    channel: &str,
    subscribe: Option<String>,
) -> Result<(Ws, Option<String>), ConnectError> {
    let mut ws = match &dial.wt {
        Some(wt) => open_wt(wt).await?,
        None => open_ws(dial, source).await?,
    };

    let token = hookwire::auth::TokenSpec::new(sub, TOKEN_TTL)
        .channels([channel_claim(channel)])
        .sign_hs256(&dial.secret);
    // Pipelined: the broker handles frames in order, so subscribe may follow connect
    // without waiting a round trip.
    let connect = format!(r#"{{"type":"connect","id":1,"token":"{token}","name":"bench"}}"#);
    ws.feed(Message::text(connect))
        .await
        .map_err(|e| ws_error("send connect", &e))?;
    let subscribing = subscribe.is_some();
    if let Some(frame) = subscribe {
        ws.feed(Message::text(frame))
            .await
            .map_err(|e| ws_error("send subscribe", &e))?;
    }
    ws.flush().await.map_err(|e| ws_error("send", &e))?;

    let mut waiting = if subscribing { 2 } else { 1 };
    let mut subscribed = None;
    // Bounded: a handful of replies are expected; the caller's timeout bounds the time.
    for _ in 0..64 {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let b = text.as_bytes();
                if contains(b, br#""type":"error""#) {
                    return Err(ConnectError::new("rejected", text.as_str()));
                }
                let is_subscribed = contains(b, br#""type":"subscribed""#);
                if is_subscribed || contains(b, br#""type":"connected""#) {
                    if is_subscribed {
                        subscribed = Some(text.as_str().to_string());
                    }
                    waiting -= 1;
                    if waiting == 0 {
                        return Ok((ws, subscribed));
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "no close frame".to_string(),
                    |f| format!("{} {}", u16::from(f.code), f.reason),
                );
                return Err(ConnectError::new(
                    "closed",
                    format!("closed by the broker: {why}"),
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_error("handshake reply", &e)),
            None => return Err(ConnectError::new("closed", "closed before the reply")),
        }
    }
    Err(ConnectError::new(
        "handshake",
        "too many frames before the reply",
    ))
}

async fn open_ws(dial: &Dial, source: Ipv4Addr) -> Result<Ws, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(|e| io_error("socket", &e))?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| io_error("bind", &e))?;
    let stream = socket
        .connect(dial.broker)
        .await
        .map_err(|e| io_error("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(dial.url.as_str(), stream, Some(dial.config))
            .await
            .map_err(|e| ws_error("upgrade", &e))?;
    Ok(crate::conn::Conn::Ws(Box::new(ws)))
}

async fn open_wt(wt: &WtDial) -> Result<Ws, ConnectError> {
    let session = wt
        .client()
        .connect(wt.url.clone())
        .await
        .map_err(|e| ConnectError::new("webtransport", format!("session: {e}")))?;
    let (send, recv) = session
        .open_bi()
        .await
        .map_err(|e| ConnectError::new("webtransport", format!("stream: {e}")))?;
    Ok(crate::conn::Conn::Wt(Box::new(crate::conn::WtConn::new(
        session, send, recv,
    ))))
}

/// Subscriber: counts messages until the connection ends (or the worker exits), then
/// records why it ended. Pings are answered by tungstenite while reading.
pub async fn subscriber_loop(
    mut ws: Ws,
    conn: usize,
    stats: Rc<RefCell<RecvStats>>,
    closed: Rc<RefCell<BTreeMap<String, u64>>>,
) {
    let cause = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                stats.borrow_mut().on_frame(conn, text.as_bytes(), now_us());
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or_else(|| "close".to_string(), |f| u16::from(f.code).to_string());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error:{}", ws_error("read", &e).class),
            None => break "eof".to_string(),
        }
    };
    *closed.borrow_mut().entry(cause).or_default() += 1;
}
