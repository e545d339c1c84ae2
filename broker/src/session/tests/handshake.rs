//! The handshake: `connect` first, within the deadline, with a token that verifies.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::memory::MemoryClient;
use super::{SECRET, node, node_with, token};
use crate::auth::TokenSpec;
use crate::config::Config;
use crate::node::Node;
use crate::protocol::{CloseCode, Disconnect, now_ms};
use crate::transport::Inbound;

#[tokio::test]
async fn connect_answers_connected_with_the_user_and_expiry() {
    let node = node();
    let spec = TokenSpec::new("alice", Duration::from_secs(600));
    let mut c = MemoryClient::open(&node);
    let r = c
        .request(json!({"type": "connect", "token": spec.sign_hs256(SECRET), "name": "tab-1"}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    assert_eq!(r["id"], 1, "{r}");
    assert_eq!(r["user"], "alice", "{r}");
    assert_eq!(r["expires"], spec.exp, "{r}");
    assert_eq!(r["node"], node.name.as_str(), "{r}");
    assert!(
        r["client"].as_str().is_some_and(|c| c.starts_with("c-")),
        "{r}"
    );
    c.ping().await;
}

#[tokio::test]
async fn no_connect_within_the_deadline_closes_with_4001() {
    let mut config = Config::default();
    config.limits.handshake_timeout_ms = 50;
    let mut c = MemoryClient::open(&node_with(config));
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert!(closed.frames.is_empty(), "{closed:?}");
    let reason = closed.disconnect.unwrap()["reason"].to_string();
    assert!(reason.contains("no connect frame within 50 ms"), "{reason}");
}

#[tokio::test]
async fn activity_before_connect_does_not_extend_the_deadline() {
    let mut config = Config::default();
    config.limits.handshake_timeout_ms = 50;
    let mut c = MemoryClient::open(&node_with(config));
    c.send_inbound(Inbound::Activity);
    c.closed().await.assert_code(4001);
}

#[tokio::test]
async fn another_frame_first_gets_unauthorized_then_4001() {
    let mut c = MemoryClient::open(&node());
    c.send(json!({"id": 7, "type": "subscribe", "channel": "chat:lobby"}));
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert_eq!(closed.frames.len(), 1, "{closed:?}");
    let err = &closed.frames[0];
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], 7, "{err}");
    assert_eq!(err["code"], "unauthorized", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("`subscribe` before `connect`"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_json_first_gets_bad_request_then_4001() {
    let mut c = MemoryClient::open(&node());
    c.send_text("{\"type\": \"connect\", ");
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert_eq!(closed.frames.len(), 1, "{closed:?}");
    let err = &closed.frames[0];
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(err.get("id").is_none(), "{err}");
}

#[tokio::test]
async fn a_connect_with_a_field_of_the_wrong_type_keeps_its_id_in_the_error() {
    let mut c = MemoryClient::open(&node());
    c.send(json!({"id": 3, "type": "connect", "token": 42}));
    let closed = c.closed().await;
    closed.assert_code(4001);
    let err = &closed.frames[0];
    assert_eq!(
        (&err["id"], &err["code"]),
        (&json!(3), &json!("bad_request")),
        "{err}"
    );
}

#[tokio::test]
async fn a_binary_first_frame_gets_bad_request_then_4001() {
    let mut c = MemoryClient::open(&node());
    c.send_inbound(Inbound::Binary);
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert_eq!(closed.frames.len(), 1, "{closed:?}");
    assert_eq!(closed.frames[0]["code"], "bad_request", "{closed:?}");
    let message = closed.frames[0]["message"].as_str().unwrap();
    assert!(message.contains("binary frames"), "{message}");
}

/// Sends `connect` with `token`; asserts the error code and the close code.
async fn refused(node: &Arc<Node>, token: &str, error: &str, code: u16) {
    let mut c = MemoryClient::open(node);
    let r = c.request(json!({"type": "connect", "token": token})).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], error, "{r}");
    let closed = c.closed().await;
    closed.assert_code(code);
    assert!(closed.frames.is_empty(), "{closed:?}");
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_unauthorized() {
    let forged = TokenSpec::new("alice", Duration::from_secs(60))
        .sign_hs256(b"not-the-node-secret-not-the-node-secret");
    refused(&node(), &forged, "unauthorized", 4001).await;
}

#[tokio::test]
async fn a_garbage_token_is_unauthorized() {
    refused(&node(), "not.a.jwt", "unauthorized", 4001).await;
}

#[tokio::test]
async fn an_expired_token_gets_token_expired_then_4001() {
    let mut spec = TokenSpec::new("alice", Duration::from_secs(60));
    spec.exp = now_ms() / 1000 - 120;
    spec.iat = spec.exp - 60;
    refused(&node(), &spec.sign_hs256(SECRET), "token_expired", 4001).await;
}

#[tokio::test]
async fn connect_without_any_token_is_unauthorized() {
    let mut c = MemoryClient::open(&node());
    c.expect_error(json!({"type": "connect"}), "unauthorized")
        .await;
    c.closed().await.assert_code(4001);
}

#[tokio::test]
async fn the_bearer_token_of_the_upgrade_serves_a_connect_without_token() {
    let node = node();
    let mut c = MemoryClient::open_with_bearer(&node, &token("alice", &[]));
    let r = c.request(json!({"type": "connect"})).await;
    assert_eq!(
        (&r["type"], &r["user"]),
        (&json!("connected"), &json!("alice")),
        "{r}"
    );
}

#[tokio::test]
async fn a_revoked_user_gets_forbidden_then_4003_without_reconnect() {
    let node = node();
    let now = now_ms() / 1000;
    node.revocations.revoke("mallory", now, now + 600).unwrap();
    let mut c = MemoryClient::open(&node);
    c.expect_error(
        json!({"type": "connect", "token": token("mallory", &[])}),
        "forbidden",
    )
    .await;
    let closed = c.closed().await;
    closed.assert_code(4003);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    // Another user is not affected.
    MemoryClient::connect(&node, &token("alice", &[])).await;
}

#[tokio::test]
async fn a_connection_the_transport_refuses_gets_that_disconnect() {
    let node = node();
    let refuse = Disconnect::new(
        CloseCode::TryAgainLater,
        "the node is at its connection limit",
    );
    let mut c = MemoryClient::open_refused(&node, refuse);
    let closed = c.closed().await;
    closed.assert_code(1013);
    let d = closed.disconnect.as_ref().unwrap();
    assert_eq!(d["reason"], "the node is at its connection limit", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    assert!(closed.frames.is_empty(), "{closed:?}");
    assert!(node.registry.peers(None).is_empty());
}

#[tokio::test]
async fn a_client_that_goes_away_before_connect_ends_the_session_without_a_close() {
    let mut c = MemoryClient::open(&node());
    c.hang_up();
    let closed = c.closed().await;
    assert!(
        closed.disconnect.is_none() && closed.close.is_none(),
        "{closed:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_live_sessions_with_1012_after_what_they_had_queued() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    alice.subscribe("chat:room").await;
    node.begin_shutdown();
    let closed = alice.closed().await;
    closed.assert_code(1012);
    let delay = closed.disconnect.as_ref().unwrap()["delay_ms"].as_u64();
    assert!(delay.is_some_and(|d| d >= 500), "{closed:?}");
}

#[tokio::test]
async fn a_session_that_authenticates_during_shutdown_is_closed_with_1012() {
    let node = node();
    // Open before shutdown, `connect` after: the registry walk could not see it.
    let mut late = MemoryClient::open(&node);
    node.begin_shutdown();
    let r = late
        .request(json!({"type": "connect", "token": token("bob", &[])}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    late.closed().await.assert_code(1012);
}
