//! Parking: an idle session gives its task up and a push, a read, the ticker or a
//! shutdown brings it back, with nothing lost or reordered.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::memory::{MemoryClient, WAIT};
use super::{node, node_with, token};
use crate::config::Config;
use crate::node::Node;

/// Waits (bounded) until `n` sessions are parked. The gauge is the signal: it moves when
/// a session parks or is woken.
async fn parked(node: &Arc<Node>, n: i64) {
    let gauge = &node.metrics.connections_parked;
    tokio::time::timeout(WAIT, async {
        while gauge.get() != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} sessions parked, not {n}", gauge.get()));
}

#[tokio::test]
async fn an_idle_session_parks_and_a_publication_or_a_request_wakes_it() {
    let node = node();
    // The ticker ends a busy session's stay awake (below).
    tokio::spawn(crate::session::tick(Arc::clone(&node)));
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    alice.subscribe("chat:room").await;
    parked(&node, 1).await;
    let mut bob = MemoryClient::connect(&node, &token("bob", &["chat:*"])).await;
    parked(&node, 2).await;
    assert_eq!(
        node.registry.peers(None).len(),
        2,
        "parked, still registered"
    );

    // A publication to the parked subscriber wakes it to write, in order.
    for i in 0..3 {
        let r = bob
            .request(json!({"type": "publish", "channel": "chat:room", "data": i}))
            .await;
        assert_eq!(r["type"], "published", "{r}");
    }
    for i in 0..3 {
        let m = alice.recv_type("message").await;
        assert_eq!(m["data"], i, "{m}");
    }
    // A request wakes it to read, and it answers.
    alice.ping().await;
    assert!(alice.pushes.is_empty(), "{:?}", alice.pushes);
    // Both were woken several times in a short while, so they stay awake for a second
    // (the busy rule, see `park`), then park again.
    parked(&node, 2).await;
}

#[tokio::test]
async fn a_parked_session_still_pings_and_a_silent_client_still_times_out() {
    let mut config = Config::default();
    config.limits.ping_interval_ms = 100;
    config.limits.pong_timeout_ms = 100;
    let node = node_with(config);
    tokio::spawn(crate::session::tick(Arc::clone(&node)));
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    parked(&node, 1).await;
    // The memory client answers no ping: the ticker wakes the parked session, which
    // pings, parks, and ends at the pong timeout.
    let closed = alice.closed().await;
    assert!(closed.close.is_none(), "{closed:?}");
    assert_eq!(node.metrics.connections_parked.get(), 0);
    assert!(node.registry.peers(None).is_empty());
}

#[tokio::test]
async fn shutdown_reaches_parked_sessions_and_waits_for_them() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    alice.subscribe("chat:room").await;
    parked(&node, 1).await;
    node.begin_shutdown();
    node.tasks.close();
    alice.closed().await.assert_code(1012);
    tokio::time::timeout(WAIT, node.tasks.wait())
        .await
        .expect("the drain waited on a session that had ended");
}
