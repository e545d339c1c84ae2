//! Publish and the requests of a connected session: history, presence, refresh, ping,
//! and the frame rate limit.

use std::time::Duration;

use serde_json::{Value, json};

use super::memory::{Closed, MemoryClient};
use super::{SECRET, node, node_with, token};
use crate::auth::TokenSpec;
use crate::config::Config;

#[tokio::test]
async fn a_publication_reaches_the_subscriber_of_another_session() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let mut bob = MemoryClient::connect(&node, &token("bob", &["chat:*"])).await;
    alice.subscribe("chat:lobby").await;

    let r = bob
        .request(json!({"type": "publish", "channel": "chat:lobby", "data": {"text": "hi"}}))
        .await;
    assert_eq!(
        r,
        json!({"id": r["id"], "type": "published", "channel": "chat:lobby", "offset": 1})
    );

    let m = alice.recv_type("message").await;
    assert_eq!(m["channel"], "chat:lobby", "{m}");
    assert_eq!(m["offset"], 1, "{m}");
    assert_eq!(m["user"], "bob", "{m}");
    assert_eq!(m["data"], json!({"text": "hi"}), "{m}");
    assert!(m["ts"].as_u64().is_some_and(|ts| ts > 0), "{m}");
    assert!(m.get("id").is_none() && m.get("meta").is_none(), "{m}");

    // The publisher, not subscribed, gets nothing but its reply.
    bob.ping().await;
    assert!(bob.pushes.is_empty(), "{:?}", bob.pushes);
}

#[tokio::test]
async fn a_publish_without_an_id_gets_no_reply_but_is_delivered() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    alice.subscribe("chat:lobby").await;
    alice.send(json!({"type": "publish", "channel": "chat:lobby", "data": null}));
    let m = alice.recv().await;
    assert_eq!(
        (&m["type"], &m["data"], &m["offset"]),
        (&json!("message"), &json!(null), &json!(1))
    );
    alice.ping().await;
    assert!(alice.pushes.is_empty(), "{:?}", alice.pushes);
}

#[tokio::test]
async fn publishing_where_clients_may_not_is_forbidden() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    alice.subscribe("news:today").await;
    let publish = |channel: &str| json!({"type": "publish", "channel": channel, "data": 1});
    let err = alice.expect_error(publish("news:today"), "forbidden").await;
    assert!(
        err["message"].as_str().unwrap().contains("\"news\""),
        "{err}"
    );
    // Without a `publish` claim, a client publishes only where it may subscribe.
    alice.expect_error(publish("user:bob"), "forbidden").await;
    alice.ping().await;
    assert!(
        alice.pushes.is_empty(),
        "nothing was published: {:?}",
        alice.pushes
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_delivered_once() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let mut bob = MemoryClient::connect(&node, &token("bob", &["chat:*"])).await;
    alice.subscribe("chat:lobby").await;
    let keyed = json!({"type": "publish", "channel": "chat:lobby", "data": "once", "key": "k-1"});
    let first = bob.request(keyed.clone()).await;
    let second = bob.request(keyed).await;
    assert_eq!(first["type"], "published", "{first}");
    assert_eq!(second["type"], "published", "{second}");
    assert_eq!(first["offset"], 1, "{first}");
    assert_eq!(
        second["offset"], 1,
        "the repeat answers the first offset: {second}"
    );
    bob.publish("chat:lobby", json!("after")).await;

    let m = alice.recv_type("message").await;
    assert_eq!(
        (&m["offset"], &m["data"]),
        (&json!(1), &json!("once")),
        "{m}"
    );
    let m = alice.recv_type("message").await;
    assert_eq!(
        (&m["offset"], &m["data"]),
        (&json!(2), &json!("after")),
        "{m}"
    );
}

#[tokio::test]
async fn history_answers_the_publications_oldest_first() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    for n in 1..=3 {
        alice.publish("chat:log", json!(n)).await;
    }
    let r = alice
        .request(json!({"type": "history", "channel": "chat:log"}))
        .await;
    assert_eq!(
        (&r["type"], &r["channel"], &r["offset"]),
        (&json!("history"), &json!("chat:log"), &json!(3))
    );
    let epoch = r["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty(), "{r}");
    let data: Vec<_> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, [json!(1), json!(2), json!(3)], "{r}");

    let newest = alice
        .request(json!({"type": "history", "channel": "chat:log", "limit": 2}))
        .await;
    assert_eq!(
        newest["publications"].as_array().unwrap().len(),
        2,
        "{newest}"
    );
    assert_eq!(newest["publications"][0]["offset"], 2, "{newest}");

    let since = alice
        .request(json!({"type": "history", "channel": "chat:log", "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(
        since["publications"].as_array().unwrap().len(),
        1,
        "{since}"
    );
    assert_eq!(since["publications"][0]["offset"], 3, "{since}");

    alice
        .expect_error(json!({"type": "history", "channel": "chat:log", "since": {"offset": 1, "epoch": "old"}}), "not_found")
        .await;
    alice
        .expect_error(
            json!({"type": "history", "channel": "user:bob"}),
            "forbidden",
        )
        .await;
}

#[tokio::test]
async fn presence_lists_both_clients() {
    let node = node();
    let alice_token = TokenSpec {
        info: Some(json!({"name": "Alice"})),
        ..TokenSpec::new("alice", Duration::from_secs(600)).channels(["chat:*"])
    }
    .sign_hs256(SECRET);
    let mut alice = MemoryClient::open(&node);
    let connected = alice
        .request(json!({"type": "connect", "token": alice_token}))
        .await;
    let alice_id = connected["client"].clone();
    let mut bob = MemoryClient::connect(&node, &token("bob", &["chat:*"])).await;
    alice.subscribe("chat:room").await;
    bob.subscribe("chat:room").await;
    let join = alice.recv_type("join").await;
    assert_eq!(
        (&join["channel"], &join["user"]),
        (&json!("chat:room"), &json!("bob")),
        "{join}"
    );

    let r = bob
        .request(json!({"type": "presence", "channel": "chat:room"}))
        .await;
    assert_eq!(
        (&r["type"], &r["channel"]),
        (&json!("presence"), &json!("chat:room")),
        "{r}"
    );
    let mut clients = r["clients"].as_array().unwrap().clone();
    clients.sort_by_key(|c| c["user"].as_str().unwrap().to_string());
    assert_eq!(clients.len(), 2, "{r}");
    assert_eq!(clients[0]["client"], alice_id, "{r}");
    assert_eq!(clients[0]["info"], json!({"name": "Alice"}), "{r}");
    assert_eq!(
        (&clients[1]["user"], &clients[1]["info"]),
        (&json!("bob"), &json!({})),
        "{r}"
    );

    bob.expect_error(
        json!({"type": "presence", "channel": "news:today"}),
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn refresh_moves_the_expiry_and_refuses_another_sub() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let err = alice
        .expect_error(
            json!({"type": "refresh", "token": token("mallory", &["chat:*"])}),
            "forbidden",
        )
        .await;
    assert!(
        err["message"].as_str().unwrap().contains("mallory"),
        "{err}"
    );
    alice
        .expect_error(
            json!({"type": "refresh", "token": "not.a.jwt"}),
            "unauthorized",
        )
        .await;

    let longer = TokenSpec::new("alice", Duration::from_secs(7200)).sign_hs256(SECRET);
    let r = alice
        .request(json!({"type": "refresh", "token": longer}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    let expected = crate::protocol::now_ms() / 1000 + 7200;
    assert!(
        r["expires"].as_u64().unwrap().abs_diff(expected) <= 2,
        "{r}"
    );
    alice.ping().await;
}

#[tokio::test]
async fn ping_answers_pong_with_the_id() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &[])).await;
    let r = alice.request(json!({"type": "ping"})).await;
    assert_eq!(r, json!({"id": r["id"], "type": "pong"}));
    assert!(r["id"].as_u64().is_some(), "{r}");
}

#[tokio::test]
async fn bad_frames_after_connect_get_bad_request_and_the_connection_stays() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &[])).await;
    alice.send_text("not json");
    assert_eq!(alice.recv().await["code"], "bad_request");
    alice
        .expect_error(json!({"type": "teleport"}), "bad_request")
        .await;
    alice
        .expect_error(
            json!({"type": "connect", "token": token("alice", &[])}),
            "bad_request",
        )
        .await;
    alice.ping().await;
}

/// A connection limited to 1 frame per second (burst 1) and 3 violations sends five pings
/// at once; returns how it ended and the answers it got, as (id, type, code).
async fn five_pings_over_the_frame_limit() -> (Closed, Vec<(Value, Value, Value)>) {
    let mut config = Config::default();
    config.rate_limits.connection_frames_per_sec = crate::rate::Rate::new(1);
    config.rate_limits.connection_frames_burst = 1;
    config.rate_limits.max_violations = 3;
    let node = node_with(config);
    let mut alice = MemoryClient::connect(&node, &token("alice", &[])).await;
    for id in 1..=5 {
        alice.send(json!({"id": id, "type": "ping"}));
    }
    let closed = alice.closed().await;
    let answers = closed
        .frames
        .iter()
        .map(|f| (f["id"].clone(), f["type"].clone(), f["code"].clone()))
        .collect();
    (closed, answers)
}

fn rate_limited(id: u64) -> (Value, Value, Value) {
    (json!(id), json!("error"), json!("rate_limited"))
}

#[tokio::test]
async fn repeated_frame_rate_violations_close_with_4008() {
    let (closed, answers) = five_pings_over_the_frame_limit().await;
    closed.assert_code(4008);
    assert_eq!(closed.disconnect.as_ref().unwrap()["reconnect"], true);
    assert!(answers.len() >= 3, "{closed:?}");
    assert_eq!(
        answers[..3],
        [
            (json!(1), json!("pong"), json!(null)),
            rate_limited(2),
            rate_limited(3),
        ],
        "{closed:?}"
    );
}

/// protocol.md: a frame with an `id` gets exactly one reply, and frames queued before a
/// close (other than 1009 and a slow consumer's) are sent first.
#[tokio::test]
async fn the_frame_that_reaches_max_violations_is_answered_before_the_close() {
    let (closed, answers) = five_pings_over_the_frame_limit().await;
    closed.assert_code(4008);
    assert_eq!(answers.get(3), Some(&rate_limited(4)), "{closed:?}");
}
