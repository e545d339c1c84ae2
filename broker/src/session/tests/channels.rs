//! Subscribe, unsubscribe and recovery.

use std::sync::Arc;

use serde_json::{Value, json};

use super::memory::MemoryClient;
use super::{node, node_with, token};
use crate::config::Config;
use crate::node::Node;

/// The offsets of a list of publications.
fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {publications}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn subscribe_answers_subscribed_with_the_stream_position() {
    let node = node();
    let mut c = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["channel"], "chat:lobby", "{r}");
    assert_eq!(r["offset"], 0, "{r}");
    assert!(!r["epoch"].as_str().unwrap().is_empty(), "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["publications"], json!([]), "{r}");
}

#[tokio::test]
async fn a_public_namespace_needs_no_channels_claim() {
    let node = node();
    let mut c = MemoryClient::connect(&node, &token("alice", &[])).await;
    c.subscribe("news:today").await;
}

#[tokio::test]
async fn a_channel_the_token_does_not_grant_is_forbidden() {
    let node = node();
    let mut c = MemoryClient::connect(&node, &token("alice", &["chat:lobby"])).await;
    let sub = |channel: &str| json!({"type": "subscribe", "channel": channel});
    let err = c.expect_error(sub("chat:vip"), "forbidden").await;
    assert!(
        err["message"].as_str().unwrap().contains("chat:vip"),
        "{err}"
    );
    c.expect_error(sub("user:bob"), "forbidden").await;
    c.expect_error(sub("nowhere:x"), "not_found").await;
    c.expect_error(sub("chat:bad name"), "bad_request").await;
    // The connection stays usable, and its own channels are still open to it.
    c.subscribe("chat:lobby").await;
    c.subscribe("user:alice").await;
}

#[tokio::test]
async fn a_second_subscribe_to_the_same_channel_is_a_bad_request() {
    let node = node();
    let mut c = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    c.subscribe("chat:lobby").await;
    let err = c
        .expect_error(
            json!({"type": "subscribe", "channel": "chat:lobby"}),
            "bad_request",
        )
        .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("already subscribed"),
        "{err}"
    );
    c.ping().await;
}

#[tokio::test]
async fn subscriptions_past_the_limit_are_forbidden() {
    let mut config = Config::default();
    config.limits.max_subscriptions = 2;
    let node = node_with(config);
    let mut c = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    c.subscribe("chat:a").await;
    c.subscribe("chat:b").await;
    c.expect_error(
        json!({"type": "subscribe", "channel": "chat:c"}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn after_unsubscribe_no_more_messages_arrive() {
    let node = node();
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let mut bob = MemoryClient::connect(&node, &token("bob", &["chat:*"])).await;
    alice.subscribe("chat:lobby").await;
    bob.publish("chat:lobby", json!("one")).await;
    assert_eq!(alice.recv_type("message").await["data"], "one");

    let r = alice
        .request(json!({"type": "unsubscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(
        r,
        json!({"id": r["id"], "type": "unsubscribed", "channel": "chat:lobby"})
    );
    bob.publish("chat:lobby", json!("two")).await;
    // The hub delivered (or not) before `published`; the pong comes after anything queued.
    alice.ping().await;
    assert!(alice.pushes.is_empty(), "{:?}", alice.pushes);

    // Unsubscribing again is idempotent.
    let again = alice
        .request(json!({"type": "unsubscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(again["type"], "unsubscribed", "{again}");
}

/// Subscribes to `channel` and publishes `n` publications into it from another client;
/// returns the epoch.
async fn stream_of(node: &Arc<Node>, channel: &str, n: u64) -> String {
    let mut first = MemoryClient::connect(node, &token("alice", &["chat:*"])).await;
    let epoch = first.subscribe(channel).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let mut publisher = MemoryClient::connect(node, &token("bob", &["chat:*"])).await;
    for i in 1..=n {
        let r = publisher.publish(channel, json!({"n": i})).await;
        assert_eq!(r["offset"], i, "{r}");
    }
    epoch
}

#[tokio::test]
async fn recover_answers_exactly_the_missed_publications() {
    let node = node();
    let epoch = stream_of(&node, "chat:room", 4).await;
    let mut carol = MemoryClient::connect(&node, &token("carol", &["chat:*"])).await;
    let r = carol
        .request(json!({
            "type": "subscribe", "channel": "chat:room",
            "recover": {"offset": 2, "epoch": epoch},
        }))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(
        (&r["recovered"], &r["offset"], &r["epoch"]),
        (&json!(true), &json!(4), &json!(epoch))
    );
    assert_eq!(offsets(&r["publications"]), [3, 4], "{r}");
    let p = &r["publications"][0];
    assert_eq!(
        (&p["channel"], &p["user"], &p["data"]),
        (&json!("chat:room"), &json!("bob"), &json!({"n": 3}))
    );
    assert!(p["ts"].as_u64().is_some() && p.get("type").is_none(), "{p}");

    // Recovering from the top misses nothing.
    let mut dave = MemoryClient::connect(&node, &token("dave", &["chat:*"])).await;
    let r = dave
        .request(json!({"type": "subscribe", "channel": "chat:room", "recover": {"offset": 4, "epoch": epoch}}))
        .await;
    assert_eq!(
        (&r["recovered"], &r["publications"]),
        (&json!(true), &json!([])),
        "{r}"
    );
}

#[tokio::test]
async fn recover_without_an_id_delivers_the_missed_publications_as_messages() {
    let node = node();
    let epoch = stream_of(&node, "chat:room", 3).await;
    let mut carol = MemoryClient::connect(&node, &token("carol", &["chat:*"])).await;
    carol.send(json!({"type": "subscribe", "channel": "chat:room", "recover": {"offset": 1, "epoch": epoch}}));
    carol.ping().await;
    let got: Vec<Value> = carol.pushes.drain(..).collect();
    assert_eq!(offsets(&Value::Array(got.clone())), [2, 3], "{got:?}");
    assert!(got.iter().all(|m| m["type"] == "message"), "{got:?}");
}

#[tokio::test]
async fn recover_with_another_epoch_is_not_recovered() {
    let node = node();
    let epoch = stream_of(&node, "chat:room", 2).await;
    let mut carol = MemoryClient::connect(&node, &token("carol", &["chat:*"])).await;
    let r = carol
        .request(json!({
            "type": "subscribe", "channel": "chat:room",
            "recover": {"offset": 1, "epoch": "not-the-epoch"},
        }))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(
        (&r["recovered"], &r["offset"], &r["epoch"]),
        (&json!(false), &json!(2), &json!(epoch))
    );
    assert_eq!(r["publications"], json!([]), "{r}");
}

#[tokio::test]
async fn a_large_recovery_is_paged_and_small_replies_are_unchanged() {
    let mut config = Config::default();
    config.limits.max_reply_bytes = 4_096;
    let node = node_with(config);
    let mut alice = MemoryClient::connect(&node, &token("alice", &["chat:*"])).await;
    let epoch = alice.subscribe("chat:big").await["epoch"].clone();
    for _ in 0..10 {
        alice.publish("chat:big", json!("z".repeat(1_000))).await;
    }
    let small = alice
        .request(json!({"type": "history", "channel": "chat:big", "limit": 2}))
        .await;
    assert!(
        small.get("more").is_none() && small.get("next_offset").is_none(),
        "{small}"
    );

    let mut carol = MemoryClient::connect(&node, &token("carol", &["chat:*"])).await;
    let r = carol
        .request(json!({
            "type": "subscribe", "channel": "chat:big",
            "recover": {"offset": 0, "epoch": epoch},
        }))
        .await;
    assert_eq!(
        (&r["recovered"], &r["more"]),
        (&json!(true), &json!(true)),
        "{r}"
    );
    let mut got = offsets(&r["publications"]);
    assert_eq!(r["next_offset"], json!(got.last().unwrap()), "{r}");
    let mut next = r["next_offset"].clone();
    while !next.is_null() {
        let page = carol
            .request(json!({"type": "history", "channel": "chat:big", "since": {"offset": next, "epoch": epoch}}))
            .await;
        got.extend(offsets(&page["publications"]));
        next = page["next_offset"].clone();
    }
    assert_eq!(got, (1..=10).collect::<Vec<u64>>());
}
