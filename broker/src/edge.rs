//! The connection edge, the same for every transport: what is checked before a session
//! starts, in order, and the start of the session itself.
//!
//! 1. At accept, before a byte is read: a handshake slot ([`begin`]: node and per-IP
//!    handshakes in progress).
//! 2. The opening request (a WebSocket upgrade, a WebTransport CONNECT), as a
//!    [`RequestHead`] ([`check_request`]): the per-IP connect rate first (a forged
//!    `Origin` does not skip it), the path, the `Origin` against
//!    `connections.allowed_origins`, where the token is (`Authorization: Bearer`, or in
//!    the URL, which is refused) — refusals are an HTTP status and a sentence.
//! 3. The opening must finish within `limits.handshake_timeout_ms` ([`deadline`]).
//! 4. Once the transport can speak protocol frames ([`run`]): the connection limits
//!    (node, per IP: 1013) and a token in the URL (4001), said in a `disconnect`, then
//!    the session (whose `connect` counts from the same opening time).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::channel::glob_match;
use crate::limits::{Admission, HandshakePermit};
use crate::logging::{Throttle, untrusted};
use crate::node::Node;
use crate::protocol::{CloseCode, Disconnect};
use crate::session::{self, ConnInfo};
use crate::transport::Transport;

/// Query parameters that look like a token; any of them refuses the connection with 4001.
const TOKEN_PARAMS: &[&str] = &["token", "jwt", "access_token", "auth", "authorization"];

/// Refused-origin lines a client can cause at will: at most this many per second.
static ORIGIN_LOG: Throttle = Throttle::new(10);

/// What an opening request says, whatever the transport.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestHead<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// An opening request refused before any protocol frame: an HTTP status and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What the checks found, carried to the session.
#[derive(Debug, Default)]
pub struct Checked {
    /// `Authorization: Bearer …` (used when `connect` has no token).
    pub bearer: Option<String>,
    /// A token-like query parameter: refused (4001) once the transport can say so.
    pub token_in_query: bool,
}

/// Step 1: a handshake slot (now, or once one of its IP's comes free: see
/// [`slot`]), or `None` (counted; the caller closes the socket at once).
pub fn begin(node: &Node, remote: SocketAddr) -> Option<Admission> {
    match node.connections.begin_handshake(remote.ip()) {
        Ok(admission) => Some(admission),
        Err(e) => {
            node.metrics.rate_limited(e.limit);
            tracing::debug!(remote = %remote, reason = %e, "Connection refused at accept");
            None
        }
    }
}

/// Step 1, in the connection's task: its slot, once it has one; `None` when the opening's
/// deadline passed waiting (the socket is closed, as a stalled opening would be). The
/// wait is boxed: it lives only while a socket waits, not in every connection task.
pub async fn slot(admission: Admission, deadline: Instant) -> Option<HandshakePermit> {
    match admission {
        Admission::Now(permit) => Some(permit),
        waiting => Box::pin(waiting.slot(deadline)).await,
    }
}

/// Step 3: when the opening must be done.
pub fn deadline(node: &Node, opened: Instant) -> Instant {
    opened + node.settings.handshake_timeout
}

/// Whether a browser `Origin` is allowed: exact, or a pattern with `*`.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|pattern| glob_match(pattern, origin))
}

/// Step 2: checks an opening request for `path`.
pub fn check_request(
    node: &Node,
    remote: SocketAddr,
    head: &RequestHead<'_>,
    path: &str,
) -> Result<Checked, Refusal> {
    // First: a flood of openings with a bad (or forged) Origin is still a flood.
    if let Err(e) = node.rate_limits.check_ip_connect(remote.ip()) {
        node.metrics.rate_limited(e.limit);
        return Err(Refusal::new(429, e.message));
    }
    if head.path != path {
        return Err(Refusal::new(
            404,
            format!("not found: clients of this listener connect to {path}"),
        ));
    }
    check_origin(node, remote, head.origin)?;
    let token_in_query = head.query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            TOKEN_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
        })
    });
    Ok(Checked {
        bearer: head.authorization.and_then(bearer),
        token_in_query,
    })
}

/// The `Origin` against `connections.allowed_origins` (403). The origin is the client's
/// choice: logged cut, escaped and throttled, and echoed cut.
fn check_origin(node: &Node, remote: SocketAddr, origin: Option<&str>) -> Result<(), Refusal> {
    let conns = &node.config.connections;
    match origin {
        Some(origin) if !origin_allowed(&conns.allowed_origins, origin) => {
            let origin = untrusted(origin);
            if ORIGIN_LOG.allow() {
                tracing::info!(remote = %remote, origin, "Connection refused: origin not allowed");
            } else {
                tracing::debug!(remote = %remote, origin, "Connection refused: origin not allowed");
            }
            Err(Refusal::new(
                403,
                format!(
                    "origin {origin:?} is not allowed to connect; add it to connections.allowed_origins"
                ),
            ))
        }
        None if !conns.allow_missing_origin => Err(Refusal::new(
            403,
            "an Origin header is required (connections.allow_missing_origin = false)",
        )),
        _ => Ok(()),
    }
}

/// `Bearer …`; the scheme is case-insensitive (RFC 9110, section 11.1).
fn bearer(authorization: &str) -> Option<String> {
    authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim().to_string())
}

/// Step 4: the connection limits and the token-in-URL refusal, then the session.
///
/// Returns the session's own future, not one wrapping it: a future that awaits another
/// it owns keeps room for it twice (its field, and the awaited copy), and this one holds
/// the transport, in every connection task. The connection's permit goes into the
/// session's `ConnInfo`, so it is given back when the session ends.
pub fn run<T: Transport + 'static>(
    node: Arc<Node>,
    transport: T,
    remote: SocketAddr,
    opened: Instant,
    slot: HandshakePermit,
    checked: Checked,
) -> impl Future<Output = ()> + Send {
    let permit = node.connections.admit(remote.ip());
    let refuse = match &permit {
        Err(e) => {
            node.metrics.rate_limited(e.limit);
            Some(Box::new(Disconnect::new(
                CloseCode::TryAgainLater,
                e.message.clone(),
            )))
        }
        Ok(_) if checked.token_in_query => {
            node.metrics.auth_failed("token_in_url");
            tracing::info!(remote = %remote, "Refused a token in the URL (the token is not logged)");
            Some(Box::new(Disconnect::new(
                CloseCode::Unauthorized,
                "tokens in the URL are refused because URLs end up in logs; send the token as `token` in the connect frame or as an Authorization: Bearer header",
            )))
        }
        Ok(_) => None,
    };
    let conn = ConnInfo {
        remote,
        bearer: checked.bearer,
        refuse,
        opened,
        handshake: Some(slot),
        admitted: permit.ok(),
    };
    session::run(node, transport, conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_pattern() {
        let allowed = vec![
            "https://app.example.com".to_string(),
            "https://*.example.org".to_string(),
        ];
        assert!(origin_allowed(&allowed, "https://app.example.com"));
        assert!(origin_allowed(&allowed, "https://chat.example.org"));
        assert!(!origin_allowed(&allowed, "http://app.example.com"));
        assert!(!origin_allowed(
            &allowed,
            "https://app.example.com.evil.net"
        ));
        assert!(!origin_allowed(&allowed, "https://example.org"));
        assert!(origin_allowed(&[], "https://anything.test"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("bearer abc").as_deref(), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
