//! The HTTP upgrade request, checked before any WebSocket frame: the per-IP connect rate
//! first (cheapest, and it also covers requests with a forged `Origin`), then the path,
//! the `Origin`, where the token is and the subprotocol.

// tungstenite's upgrade callback returns its `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

use super::PATH;
use crate::channel::glob_match;
use crate::logging::{Throttle, untrusted};
use crate::node::Node;
use crate::protocol::SUBPROTOCOL;

/// Query parameters that look like a token; any of them refuses the connection with 4001.
const TOKEN_PARAMS: &[&str] = &["token", "jwt", "access_token", "auth", "authorization"];

#[derive(Default)]
pub(super) struct Upgrade {
    pub(super) bearer: Option<String>,
    pub(super) token_in_query: bool,
}

fn http_error(status: http::StatusCode, message: String) -> ErrorResponse {
    let mut err = ErrorResponse::new(Some(message + "\n"));
    *err.status_mut() = status;
    err
}

/// Whether a browser `Origin` is allowed: exact, or a pattern with `*`.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|pattern| glob_match(pattern, origin))
}

/// Refused-origin lines a client can cause at will: at most this many per second.
static ORIGIN_LOG: Throttle = Throttle::new(10);

/// Checks the upgrade request: connect rate, path, origin, where the token is,
/// subprotocol. (The error type is tungstenite's callback contract.)
pub(super) fn check_upgrade(
    node: &Node,
    remote: SocketAddr,
    req: &Request,
    mut resp: Response,
    upgrade: &mut Upgrade,
) -> Result<Response, ErrorResponse> {
    // First: a flood of upgrades with a bad (or forged) Origin is still a flood.
    if let Err(e) = node.rate_limits.check_ip_connect(remote.ip()) {
        node.metrics.rate_limited(e.limit);
        return Err(http_error(http::StatusCode::TOO_MANY_REQUESTS, e.message));
    }
    if req.uri().path() != PATH {
        return Err(http_error(
            http::StatusCode::NOT_FOUND,
            format!("not found: WebSocket clients connect to {PATH}"),
        ));
    }
    check_origin(node, remote, req)?;
    if let Some(query) = req.uri().query() {
        upgrade.token_in_query = query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            TOKEN_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
        });
    }
    upgrade.bearer = bearer(req);
    if offers_v1(req) {
        resp.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(resp)
}

/// The `Origin` against `connections.allowed_origins` (403). The origin is the client's
/// choice: logged cut, escaped and throttled, and echoed cut.
fn check_origin(node: &Node, remote: SocketAddr, req: &Request) -> Result<(), ErrorResponse> {
    let conns = &node.config.connections;
    match req
        .headers()
        .get(http::header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""))
    {
        Some(origin) if !origin_allowed(&conns.allowed_origins, origin) => {
            let origin = untrusted(origin);
            if ORIGIN_LOG.allow() {
                tracing::info!(remote = %remote, origin, "Upgrade refused: origin not allowed");
            } else {
                tracing::debug!(remote = %remote, origin, "Upgrade refused: origin not allowed");
            }
            Err(http_error(
                http::StatusCode::FORBIDDEN,
                format!(
                    "origin {origin:?} is not allowed to connect; add it to connections.allowed_origins"
                ),
            ))
        }
        None if !conns.allow_missing_origin => Err(http_error(
            http::StatusCode::FORBIDDEN,
            "an Origin header is required (connections.allow_missing_origin = false)".into(),
        )),
        _ => Ok(()),
    }
}

/// `Authorization: Bearer …`; the scheme is case-insensitive (RFC 9110, section 11.1).
fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim().to_string())
}

fn offers_v1(req: &Request) -> bool {
    req.headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
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
}
