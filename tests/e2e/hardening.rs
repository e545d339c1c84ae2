//! Hardening against clients and token holders who try to harm others: each test attacks
//! the real binary and checks what the server kept, not only the reply.

use serde_json::{Value, json};

use crate::harness::*;
use crate::http::*;

async fn api_broker() -> TestBroker {
    TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await
}

async fn api_publish(b: &TestBroker, body: Value) -> Response {
    request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await
}

/// Idempotency keys are scoped by publisher: a member who guesses another's key cannot
/// suppress that member's publication, nor the backend's.
#[tokio::test]
async fn a_guessed_idempotency_key_suppresses_nobody_else() {
    let b = api_broker().await;
    let mut watcher = b.client("watcher", &["chat:*"]).await;
    watcher.subscribe("chat:keys").await;
    let mut mallory = b.client("mallory", &["chat:*"]).await;
    let mut alice = b.client("alice", &["chat:*"]).await;

    let first = mallory
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "mallory"}, "key": "order-42"}))
        .await;
    assert_eq!(first["type"], "published", "{first}");
    let theirs = alice
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "alice"}, "key": "order-42"}))
        .await;
    assert_eq!(theirs["type"], "published", "{theirs}");
    assert_ne!(
        theirs["offset"], first["offset"],
        "alice's publication was suppressed"
    );
    let api = api_publish(
        &b,
        json!({"channel": "chat:keys", "data": {"by": "api"}, "key": "order-42"}),
    )
    .await;
    assert_eq!(api.status, 200, "{}", api.body);
    // The publisher's own repeat is still suppressed.
    let again = alice
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "alice"}, "key": "order-42"}))
        .await;
    assert_eq!(again["offset"], theirs["offset"]);

    let got = watcher.messages("chat:keys", 3).await;
    let by: Vec<&str> = got
        .iter()
        .map(|m| m["data"]["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["mallory", "alice", "api"]);
    watcher.ping().await;
    assert!(
        !watcher.pushes.iter().any(|m| m["type"] == "message"),
        "a repeat was delivered twice"
    );
}
