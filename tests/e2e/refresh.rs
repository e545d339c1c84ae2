//! Token lifetime on a live connection: `refresh`, and the close with 4002 at `exp`.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn token_until(sub: &str, exp: u64) -> String {
    let mut s = spec(sub, &["chat:*"]);
    s.exp = exp;
    s.sign_hs256(SECRET.as_bytes())
}

#[tokio::test]
async fn refresh_with_a_token_for_the_same_user_moves_the_expiry() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    let exp = now_s() + 7200;
    let r = c
        .request(json!({"type": "refresh", "token": token_until("alice", exp)}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert_eq!(r["expires"], exp);
    // Without an id a successful refresh is silent.
    c.send(json!({"type": "refresh", "token": token_until("alice", exp + 1)}))
        .await;
    c.ping().await;
    assert!(c.pushes.is_empty(), "{:?}", c.pushes);
}

#[tokio::test]
async fn refresh_for_another_user_or_with_a_bad_token_fails_and_the_connection_stays() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    c.subscribe("chat:r").await;
    let e = c
        .expect_error(
            json!({"type": "refresh", "token": token("bob", &["chat:*"])}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("bob"), "{e}");
    let forged = forged_token("alice", &["*"]);
    c.expect_error(json!({"type": "refresh", "token": forged}), "unauthorized")
        .await;
    c.expect_error(
        json!({"type": "refresh", "token": token_until("alice", now_s() - 60)}),
        "token_expired",
    )
    .await;
    c.expect_error(json!({"type": "refresh"}), "bad_request")
        .await;
    // Still connected, still subscribed, still the same user.
    c.ping().await;
    let p = c.publish("chat:r", json!("still here")).await;
    let m = c.messages("chat:r", 1).await;
    assert_eq!(m[0]["offset"], p["offset"]);
    assert_eq!(m[0]["user"], "alice");
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_with_4002() {
    let broker = TestBroker::start().await;
    let exp = now_s() + 2;
    let (mut c, r) = broker.connect(&token_until("alice", exp)).await;
    assert_eq!(r["type"], "connected", "{r}");
    assert_eq!(r["expires"], exp);
    c.subscribe("chat:exp").await;
    let started = tokio::time::Instant::now();
    let closed = c.closed().await;
    closed.assert_code(4002);
    let d = closed.disconnect.unwrap();
    assert_eq!(d["reconnect"], true, "{d}");
    assert!(d["reason"].as_str().unwrap().contains("refresh"), "{d}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // The session was cleaned up, not just closed.
    let line = broker.wait_log(r#""code":4002"#).await;
    assert!(line.contains("Disconnected"), "{line}");
}

#[tokio::test]
async fn a_refreshed_connection_outlives_its_first_token() {
    let broker = TestBroker::start().await;
    let exp = now_s() + 2;
    let mut refreshed = broker.client_with(&token_until("alice", exp)).await;
    let r = refreshed
        .request(json!({"type": "refresh", "token": token_until("alice", now_s() + 3600)}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    // A control connection whose token expires one second later than the first token did:
    // once it is closed, the first token's expiry has certainly passed.
    let mut control = broker.client_with(&token_until("bob", exp + 1)).await;
    control.closed().await.assert_code(4002);
    refreshed.ping().await;
    assert!(
        refreshed.pushes.iter().all(|v| v["type"] != "disconnect"),
        "{:?}",
        refreshed.pushes
    );
}
