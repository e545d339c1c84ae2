//! Plain HTTP on the client listener, beside `GET /ws`: the JavaScript client at
//! `/client.js` always; with `--dev`, the demo page at `/`, `/dev/token` (mints a
//! short-lived token for the demo) and `/dev/cert-hash` (the QUIC listener's certificate
//! hash, for `serverCertificateHashes`, and the WebTransport URL). Small, fixed answers; the connection closes after one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::node::Node;

/// The client library, as served at `/client.js`.
pub const CLIENT_JS: &str = include_str!("../../../../clients/js/hookwire.js");
/// Its TypeScript declarations, at `/client.d.ts`.
pub const CLIENT_DTS: &str = include_str!("../../../../clients/js/hookwire.d.ts");
/// The demo page, at `/` with `--dev`.
pub const DEMO_HTML: &str = include_str!("../../../../clients/demo/index.html");

/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;
/// Lifetime of a `/dev/token` token (the demo refreshes it through `getToken`).
const DEV_TOKEN_TTL: Duration = Duration::from_secs(600);

/// What the pages can serve.
#[derive(Debug, Default)]
pub struct Pages {
    /// Set only with `--dev`.
    pub dev: Option<DevPages>,
}

#[derive(Default)]
pub struct DevPages {
    /// HS256 secret `/dev/token` signs with (none: it answers 404).
    pub token_secret: Option<Vec<u8>>,
    /// The QUIC listener's certificate, when it runs.
    pub cert: Option<DevCert>,
}

impl std::fmt::Debug for DevPages {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPages")
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "[secret]"),
            )
            .field("cert", &self.cert)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct DevCert {
    /// SHA-256 of the certificate, lower-case hex.
    pub sha256: String,
    /// The QUIC listener's address.
    pub addr: SocketAddr,
}

struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn text(status: &'static str, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    fn json(status: &'static str, body: serde_json::Value) -> Self {
        Self::new(status, "application/json", body.to_string())
    }
}

/// Reads one request head and answers it.
pub async fn serve(
    mut stream: TcpStream,
    remote: SocketAddr,
    node: &Node,
    pages: &Pages,
    deadline: Instant,
) {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return respond(
                &mut stream,
                Answer::text(
                    "431 Request Header Fields Too Large",
                    "the request head is over 8 KiB",
                ),
            )
            .await;
        }
        let mut chunk = [0u8; 2048];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let answer = match req.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => route(&req, remote, node, pages),
        _ => Answer::text("400 Bad Request", "not an HTTP/1.1 request"),
    };
    // The path without its query (which may hold a token), escaped: the client chose it.
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    tracing::debug!(remote = %remote, path = crate::logging::untrusted(path), status = answer.status, "Answered a plain HTTP request on the client listener");
    respond(&mut stream, answer).await;
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn route(
    req: &httparse::Request<'_, '_>,
    remote: SocketAddr,
    node: &Node,
    pages: &Pages,
) -> Answer {
    if let Err(e) = node.rate_limits.check_ip_connect(remote.ip()) {
        node.metrics.rate_limited(e.limit);
        return Answer::text("429 Too Many Requests", e.message);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if req.method != Some("GET") {
        return Answer::text("405 Method Not Allowed", "this listener answers GET only");
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    match (path, &pages.dev) {
        ("/client.js", _) => Answer::new("200 OK", "text/javascript; charset=utf-8", CLIENT_JS),
        ("/client.d.ts", _) => Answer::new(
            "200 OK",
            "application/typescript; charset=utf-8",
            CLIENT_DTS,
        ),
        ("/" | "/index.html", Some(_)) => {
            Answer::new("200 OK", "text/html; charset=utf-8", DEMO_HTML)
        }
        ("/favicon.ico", _) => Answer::new("204 No Content", "text/plain", ""),
        ("/dev/token", Some(dev)) => dev_token(dev, query),
        ("/dev/cert-hash", Some(dev)) => cert_hash(dev, header("host")),
        ("/" | "/index.html" | "/dev/token" | "/dev/cert-hash", None) => Answer::text(
            "404 Not Found",
            "the demo page and /dev/* are served only when the broker runs with --dev",
        ),
        _ => Answer::text(
            "404 Not Found",
            format!(
                "not found: clients of this listener connect to {}",
                super::PATH
            ),
        ),
    }
}

/// `GET /dev/token?sub=NAME`: a token for the demo (chat and typing channels).
fn dev_token(dev: &DevPages, query: &str) -> Answer {
    let Some(secret) = &dev.token_secret else {
        return Answer::text(
            "404 Not Found",
            "/dev/token signs with an HS256 secret, and this broker has none",
        );
    };
    let sub = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "sub")
        .map(|(_, v)| v)
        .unwrap_or("");
    if sub.is_empty()
        || sub.len() > 32
        || !sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Answer::text(
            "400 Bad Request",
            "sub must be 1 to 32 of A-Z a-z 0-9 _ -, e.g. /dev/token?sub=alice",
        );
    }
    let mut spec =
        crate::auth::TokenSpec::new(sub, DEV_TOKEN_TTL).channels(["chat:*", "typing:*", "news:*"]);
    spec.info = Some(serde_json::json!({ "name": sub }));
    spec.extra.insert("name".into(), sub.into());
    let token = spec.sign_hs256(secret);
    Answer::json(
        "200 OK",
        serde_json::json!({ "token": token, "expires": spec.exp }),
    )
}

/// `GET /dev/cert-hash`: what a browser passes as `serverCertificateHashes`.
fn cert_hash(dev: &DevPages, host: Option<&str>) -> Answer {
    let Some(cert) = &dev.cert else {
        return Answer::json(
            "404 Not Found",
            serde_json::json!({ "error": "the WebTransport listener is off (see the log)" }),
        );
    };
    // The host the page was loaded from, with the QUIC port: what the browser can reach.
    let ip = cert.addr.ip();
    let host = match host.map(strip_port) {
        Some(h) if ip.is_unspecified() => h.to_string(),
        _ => ip.to_string(),
    };
    Answer::json(
        "200 OK",
        serde_json::json!({
            "algorithm": "sha-256",
            "hash": cert.sha256,
            "url": format!("https://{host}:{}{}", cert.addr.port(), crate::transport::wt::PATH),
        }),
    )
}

/// `host:port` → `host` (`[v6]:port` → `[v6]`).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    }
}

async fn respond(stream: &mut TcpStream, answer: Answer) {
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(answer.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
