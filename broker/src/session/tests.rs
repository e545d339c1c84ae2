//! Session tests over in-memory transports (ring 2): no sockets, the session's
//! `run` driven through the `Transport` trait.
//!
//! - `memory`: the in-memory transport and the test client on its other end;
//! - `handshake`: `connect`, its deadline and every way it fails;
//! - `channels`: subscribe, unsubscribe, recovery;
//! - `publish`: publish, idempotency, history, presence, refresh, ping, frame limits.

mod channels;
mod handshake;
mod memory;
mod park;
mod publish;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnInfo, run};
use crate::auth::{TokenSpec, Verifier};
use crate::config::Config;
use crate::node::Node;
use crate::protocol::{CloseCode, EncodedFrame};
use crate::transport::{Inbound, Keepalive, Transport, TransportKind, WriteError};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A node built from `config`, verifying HS256 tokens signed with [`SECRET`].
fn node_with(config: Config) -> Arc<Node> {
    let verifier = Verifier::new(&config.auth, Some(SECRET)).unwrap();
    Node::new(config, verifier, crate::node::ApiKeys::default())
}

/// A node with the default config (namespaces `chat`, `user`, `news`).
fn node() -> Arc<Node> {
    node_with(Config::default())
}

/// A token for `sub`, valid for an hour, that may subscribe to `channels`.
fn token(sub: &str, channels: &[&str]) -> String {
    TokenSpec::new(sub, Duration::from_secs(3600))
        .channels(channels.iter().copied())
        .sign_hs256(SECRET)
}

/// A client that sends `connect`, then nothing, and whose socket takes replies but never
/// a ping (its receive window is full).
struct FullSocket {
    connect: Option<String>,
    keepalive: Keepalive,
}

impl Transport for FullSocket {
    fn kind(&self) -> TransportKind {
        TransportKind::Memory
    }

    fn keepalive(&self) -> Keepalive {
        self.keepalive
    }

    async fn recv(&mut self) -> Inbound {
        match self.connect.take() {
            Some(text) => Inbound::Text(text.into()),
            None => std::future::pending().await,
        }
    }

    async fn send(&mut self, batch: &mut VecDeque<EncodedFrame>) -> Result<(), WriteError> {
        batch.clear();
        Ok(())
    }

    fn ping(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send {
        std::future::pending()
    }

    async fn close(&mut self, _code: CloseCode, _reason: &str) {}
}

/// A node pinging every `ping_ms` (and waiting as long for the answer) and a session
/// over a [`FullSocket`] that keeps itself alive as `keepalive` says.
fn full_socket_session(
    ping_ms: u64,
    keepalive: Keepalive,
) -> (Arc<Node>, impl Future<Output = ()> + Send) {
    let mut config = Config::default();
    config.limits.ping_interval_ms = ping_ms;
    config.limits.pong_timeout_ms = ping_ms;
    let node = node_with(config);
    let token = TokenSpec::new("alice", Duration::from_secs(60)).sign_hs256(SECRET);
    let transport = FullSocket {
        connect: Some(format!(r#"{{"id":1,"type":"connect","token":"{token}"}}"#)),
        keepalive,
    };
    let conn = ConnInfo {
        remote: "127.0.0.1:1".parse().unwrap(),
        bearer: None,
        refuse: None,
        opened: Instant::now(),
        handshake: None,
        admitted: None,
    };
    // Keepalive is the node's ticker's job (the server starts it).
    tokio::spawn(super::tick(Arc::clone(&node)));
    let tasks = node.tasks.clone();
    let handshake = run(Arc::clone(&node), transport, conn);
    // The session runs in a task of its own after its handshake: until it ends.
    let session = async move {
        handshake.await;
        tasks.close();
        tasks.wait().await;
    };
    (node, session)
}

#[tokio::test]
async fn a_ping_that_cannot_be_written_ends_the_session() {
    let (node, session) = full_socket_session(100, Keepalive::Pings);
    tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("the session waited forever on a ping");
    assert!(
        node.registry.peers(None).is_empty(),
        "the session left the registry"
    );
}

#[tokio::test]
async fn a_transport_that_keeps_itself_alive_is_never_pinged() {
    let (_node, session) = full_socket_session(50, Keepalive::Transport);
    // Ten ping intervals: a session that pinged would have hung on the full socket and
    // ended at the pong timeout.
    let ended = tokio::time::timeout(Duration::from_millis(500), session).await;
    assert!(ended.is_err(), "the session ended: it pinged");
}
