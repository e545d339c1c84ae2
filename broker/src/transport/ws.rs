//! WebSocket transport: `GET /ws` on the client listener.
//!
//! tokio-tungstenite does the HTTP upgrade; after it, the connection reads and writes
//! frames on the socket itself (`conn`, `codec`) through per-thread buffers, so an idle
//! connection holds no read or write buffer (see ARCHITECTURE.md for why).
//!
//! The checks before a session are the transport-free edge's (`edge`): a handshake slot at
//! accept, the upgrade request (`upgrade` reads it for `edge::check_request`), the
//! handshake deadline, then the connection limits and the session (`edge::run`).

// tungstenite's upgrade callback returns its `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

mod codec;
mod conn;
pub mod pages;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::edge::{self, Checked};
use crate::limits::{Admission, HandshakePermit};
use crate::node::Node;
pub use conn::WsTransport;
use pages::Pages;
use upgrade::check_upgrade;

/// The path clients upgrade on.
pub const PATH: &str = "/ws";

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

/// The upgrade's tungstenite config: its socket is taken back as soon as the upgrade is
/// done, so it needs no buffers.
fn handshake_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16)
        .write_buffer_size(0)
}

/// One connection: the upgrade, then the session. An async block, not an async fn, so the
/// task's state does not keep the arguments twice (see `session::run`); and what only the
/// upgrade needs is boxed and goes with it, so the task keeps no room for it while the
/// session runs.
// Deliberately not `async fn`: see the doc comment (the state's size).
#[allow(clippy::manual_async_fn)]
fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    node: Arc<Node>,
    admission: Admission,
    pages: Arc<Pages>,
) -> impl Future<Output = ()> + Send {
    let accepted = Box::new(Accepted {
        stream,
        remote,
        node,
        admission,
        pages,
    });
    async move {
        let Some(Upgraded {
            node,
            transport,
            remote,
            opened,
            slot,
            checked,
        }) = Box::pin(upgrade(accepted)).await
        else {
            return;
        };
        edge::run(node, transport, remote, opened, slot, checked).await;
    }
}

/// A connection as accepted.
struct Accepted {
    stream: TcpStream,
    remote: SocketAddr,
    node: Arc<Node>,
    admission: Admission,
    pages: Arc<Pages>,
}

/// A connection upgraded to WebSocket, ready for the edge's last checks and its session.
struct Upgraded {
    node: Arc<Node>,
    transport: WsTransport,
    remote: SocketAddr,
    opened: Instant,
    slot: HandshakePermit,
    checked: Checked,
}

/// A handshake slot, then the upgrade (or a plain page, then `None`).
async fn upgrade(accepted: Box<Accepted>) -> Option<Upgraded> {
    let Accepted {
        stream,
        remote,
        node,
        admission,
        pages,
    } = *accepted;
    let opened = Instant::now();
    let Some(slot) = edge::slot(admission, edge::deadline(&node, opened)).await else {
        tracing::debug!(remote = %remote, "No handshake slot came free in time; closed");
        return None;
    };
    match wants_upgrade(&stream, edge::deadline(&node, opened)).await {
        Some(true) => drop(pages),
        Some(false) => {
            let deadline = edge::deadline(&node, opened);
            Box::pin(pages::serve(stream, remote, &node, &pages, deadline)).await;
            return None;
        }
        None => return None,
    }
    let mut checked = Checked::default();
    let config = handshake_config();
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| check_upgrade(&node, remote, req, resp, &mut checked),
        Some(config),
    );
    let ws = match tokio::time::timeout_at(edge::deadline(&node, opened), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(remote = %remote, error = %e, "WebSocket upgrade failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(remote = %remote, "WebSocket upgrade timed out");
            return None;
        }
    };
    // Connection limits answer with a WebSocket close (1013), so they are checked
    // after the upgrade.
    // The upgrade leaves nothing unread (tungstenite refuses bytes after the request),
    // so the socket is taken back whole.
    let transport = WsTransport::new(ws.into_inner(), &node.settings);
    Some(Upgraded {
        node,
        transport,
        remote,
        opened,
        slot,
        checked,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's first task holds this future through the upgrade and the
    /// handshake (then the live session runs in a task of its own, and parks while
    /// idle: `session::park`), so its size is paid per connection being opened. The
    /// bound is for a debug build (larger than a release one); `cargo test --release
    /// --lib -- --nocapture connection_task` prints the release figure.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let config = crate::config::Config::default();
        let verifier = crate::auth::Verifier::new(&config.auth, Some(&[7u8; 32])).unwrap();
        let node = Node::new(config, verifier, crate::node::ApiKeys::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, remote) = listener.accept().await.unwrap();
        let admission = edge::begin(&node, remote).unwrap();
        let task = connection(stream, remote, node, admission, Arc::new(Pages::default()));
        let size = std::mem::size_of_val(&task);
        println!("connection task future: {size} bytes");
        // tokio rounds a task up to 128 bytes (its header and trailer add about 110):
        // at 768 the whole task fits in 896 bytes, one step of 128 under 1,024.
        assert!(size <= 776, "the connection task grew to {size} bytes");
    }
}
