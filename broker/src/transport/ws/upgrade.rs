//! The HTTP upgrade request, checked before any WebSocket frame by the transport-free
//! edge (`edge::check_request`: connect rate, path, `Origin`, where the token is); what
//! is WebSocket's own here is reading the request and choosing the subprotocol.

// tungstenite's upgrade callback returns its `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

use super::PATH;
use crate::edge::{self, Checked, RequestHead};
use crate::node::Node;
use crate::protocol::SUBPROTOCOL;

/// Checks the upgrade request and, when it passes, keeps what the edge found in
/// `checked`. (The error type is tungstenite's callback contract.)
pub(super) fn check_upgrade(
    node: &Node,
    remote: SocketAddr,
    req: &Request,
    mut resp: Response,
    checked: &mut Checked,
) -> Result<Response, ErrorResponse> {
    let header = |name| req.headers().get(name).map(|v| v.to_str().unwrap_or(""));
    let head = RequestHead {
        path: req.uri().path(),
        query: req.uri().query(),
        origin: header(http::header::ORIGIN),
        authorization: header(http::header::AUTHORIZATION),
    };
    *checked = edge::check_request(node, remote, &head, PATH).map_err(|refusal| {
        let mut err = ErrorResponse::new(Some(refusal.message + "\n"));
        *err.status_mut() =
            http::StatusCode::from_u16(refusal.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        err
    })?;
    if offers_v1(req) {
        resp.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(resp)
}

fn offers_v1(req: &Request) -> bool {
    req.headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}
