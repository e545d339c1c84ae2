//! Channels: fan-out and per-subscriber order, permissions from token claims and
//! namespaces, and the order in which a request is checked.

use std::collections::HashSet;

use hookwire::auth::TokenSpec;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn fan_out_delivers_every_publication_once_and_in_order_to_every_subscriber() {
    const SUBSCRIBERS: usize = 20;
    const PUBLICATIONS: usize = 50;
    let broker = TestBroker::start().await;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = broker.client(&format!("user{i}"), &["chat:*"]).await;
        c.subscribe("chat:fanout").await;
        subscribers.push(c);
    }
    let mut publisher = broker.client("publisher", &["chat:*"]).await;
    let mut offsets = Vec::new();
    for n in 0..PUBLICATIONS {
        let p = publisher.publish("chat:fanout", json!({"n": n})).await;
        offsets.push(p["offset"].as_u64().unwrap());
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    // Every subscriber reads concurrently.
    let readers = subscribers.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let got = c.messages("chat:fanout", PUBLICATIONS).await;
            // Nothing more arrives after the last one: a ping round trip drains the pipe.
            c.ping().await;
            let extra = c.pushes.iter().filter(|v| v["type"] == "message").count();
            (got, extra)
        })
    });
    for reader in readers {
        let (got, extra) = reader.await.unwrap();
        assert_eq!(extra, 0, "duplicates after the last publication");
        let got_offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(got_offsets, offsets, "offsets out of order or missing");
        for (n, m) in got.iter().enumerate() {
            assert_eq!(m["data"], json!({"n": n}));
            assert_eq!(m["user"], "publisher");
        }
    }
}

#[tokio::test]
async fn a_personal_channel_is_only_for_its_user() {
    let broker = TestBroker::start().await;
    // No `channels` claim needed for one's own personal channel.
    let mut alice = broker.client("alice", &[]).await;
    let s = alice.subscribe("user:alice").await;
    assert_eq!(s["channel"], "user:alice");
    let mut bob = broker.client("bob", &["*"]).await;
    let e = bob
        .expect_error(
            json!({"type": "subscribe", "channel": "user:alice"}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("user:bob"), "{e}");
    bob.expect_error(
        json!({"type": "history", "channel": "user:alice"}),
        "forbidden",
    )
    .await;
    bob.subscribe("user:bob").await;
    // Clients may not publish into personal channels (only the server API may).
    alice
        .expect_error(
            json!({"type": "publish", "channel": "user:alice", "data": 1}),
            "forbidden",
        )
        .await;
}

#[tokio::test]
async fn channels_and_publish_claims_are_glob_patterns() {
    let broker = TestBroker::start().await;
    let mut spec =
        TokenSpec::new("reader", std::time::Duration::from_secs(3600)).channels(["chat:*"]);
    spec.publish = Some(vec!["chat:own".into()]);
    let mut c = broker
        .client_with(&spec.sign_hs256(SECRET.as_bytes()))
        .await;
    c.subscribe("chat:lobby").await;
    c.subscribe("chat:own").await;
    let e = c
        .expect_error(
            json!({"type": "publish", "channel": "chat:lobby", "data": "hi"}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("publish"), "{e}");
    let p = c.publish("chat:own", json!("mine")).await;
    assert_eq!(p["channel"], "chat:own");
    assert_eq!(c.messages("chat:own", 1).await[0]["data"], "mine");
    // Outside the `channels` patterns.
    let mut narrow = broker.client("narrow", &["chat:room-?"]).await;
    narrow.subscribe("chat:room-1").await;
    narrow
        .expect_error(
            json!({"type": "subscribe", "channel": "chat:room-12"}),
            "forbidden",
        )
        .await;
    // Without a `publish` claim a token publishes where it may subscribe.
    narrow.publish("chat:room-2", json!(1)).await;
    narrow
        .expect_error(
            json!({"type": "publish", "channel": "chat:lobby", "data": 1}),
            "forbidden",
        )
        .await;
    // A publish-only pattern does not grant subscribing.
    let mut spec = TokenSpec::new("writer", std::time::Duration::from_secs(3600));
    spec.publish = Some(vec!["chat:*".into()]);
    let mut w = broker
        .client_with(&spec.sign_hs256(SECRET.as_bytes()))
        .await;
    w.publish("chat:lobby", json!(2)).await;
    w.expect_error(
        json!({"type": "subscribe", "channel": "chat:lobby"}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_namespace_is_not_found() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["*"]).await;
    for frame in [
        json!({"type": "subscribe", "channel": "nope:lobby"}),
        json!({"type": "subscribe", "channel": "lobby"}),
        json!({"type": "publish", "channel": "nope:lobby", "data": 1}),
        json!({"type": "history", "channel": "nope:lobby"}),
        json!({"type": "presence", "channel": "nope:lobby"}),
    ] {
        let e = c.expect_error(frame, "not_found").await;
        assert!(e["message"].as_str().unwrap().contains("namespace"), "{e}");
    }
}

#[tokio::test]
async fn bad_channel_names_are_bad_requests_checked_first() {
    let broker = TestBroker::start().await;
    // A token that grants nothing: the name is checked before the permission.
    let mut c = broker.client("alice", &[]).await;
    let too_long = format!("chat:{}", "a".repeat(251));
    assert_eq!(too_long.len(), 256);
    for channel in [
        "chat:lobby one",
        "chat:lobby\n",
        "chat:é",
        "chat:*",
        "",
        too_long.as_str(),
        "nope:bad name",
    ] {
        for frame in [
            json!({"type": "subscribe", "channel": channel}),
            json!({"type": "publish", "channel": channel, "data": 1}),
            json!({"type": "history", "channel": channel}),
        ] {
            c.expect_error(frame, "bad_request").await;
        }
    }
    // 255 bytes is fine: it goes on to the permission check.
    let longest = format!("chat:{}", "a".repeat(250));
    c.expect_error(
        json!({"type": "subscribe", "channel": longest}),
        "forbidden",
    )
    .await;
    c.ping().await;
}

#[tokio::test]
async fn news_is_public_to_subscribe_but_clients_may_not_publish() {
    let broker = TestBroker::start().await;
    // No `channels` claim at all.
    let mut reader = broker.client("reader", &[]).await;
    let s = reader.subscribe("news:today").await;
    assert_eq!(s["recovered"], false);
    let h = reader
        .request(json!({"type": "history", "channel": "news:today"}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    // Even a token whose patterns match may not publish there.
    let mut spec =
        TokenSpec::new("editor", std::time::Duration::from_secs(3600)).channels(["news:*"]);
    spec.publish = Some(vec!["news:*".into()]);
    let mut editor = broker
        .client_with(&spec.sign_hs256(SECRET.as_bytes()))
        .await;
    let e = editor
        .expect_error(
            json!({"type": "publish", "channel": "news:today", "data": "scoop"}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("news"), "{e}");
    reader.ping().await;
    assert!(
        reader.pushes.iter().all(|v| v["type"] != "message"),
        "a refused publication was delivered"
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let mut a = broker.client("alice", &["chat:*"]).await;
    let mut b = broker.client("bob", &["chat:*"]).await;
    a.subscribe("chat:u").await;
    b.subscribe("chat:u").await;
    b.publish("chat:u", json!(1)).await;
    assert_eq!(a.messages("chat:u", 1).await[0]["data"], 1);
    let r = a
        .request(json!({"type": "unsubscribe", "channel": "chat:u"}))
        .await;
    assert_eq!(r["type"], "unsubscribed", "{r}");
    assert_eq!(r["channel"], "chat:u");
    b.publish("chat:u", json!(2)).await;
    // b (still subscribed) sees it; a does not.
    let seen: HashSet<u64> = b
        .messages("chat:u", 2)
        .await
        .iter()
        .map(|m| m["data"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, HashSet::from([1, 2]));
    a.ping().await;
    assert!(
        a.pushes.iter().all(|v| v["type"] != "message"),
        "{:?}",
        a.pushes
    );
    // Subscribing twice is refused; the first subscription still works.
    b.expect_error(
        json!({"type": "subscribe", "channel": "chat:u"}),
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_publishes_once() {
    let broker = TestBroker::start().await;
    let mut sub = broker.client("sub", &["chat:*"]).await;
    sub.subscribe("chat:idem").await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    let publish = |key: &str, data: i32| json!({"type": "publish", "channel": "chat:idem", "data": data, "key": key});
    let first = c.request(publish("k-1", 1)).await;
    assert_eq!(first["type"], "published", "{first}");
    let again = c.request(publish("k-1", 1)).await;
    assert_eq!(again["type"], "published", "{again}");
    assert_eq!(again["offset"], first["offset"]);
    let other = c.request(publish("k-2", 2)).await;
    assert!(
        other["offset"].as_u64() > first["offset"].as_u64(),
        "{other}"
    );
    let got: Vec<_> = sub
        .messages("chat:idem", 2)
        .await
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(got, vec![json!(1), json!(2)]);
    sub.ping().await;
    assert!(
        sub.pushes.iter().all(|v| v["type"] != "message"),
        "{:?}",
        sub.pushes
    );
    c.expect_error(publish(&"k".repeat(129), 3), "bad_request")
        .await;
    c.expect_error(publish("", 3), "bad_request").await;
}

/// A channel larger than what a fan-out writes under its lock (1,024 subscribers): its
/// publications are set aside and written once the publishing read is handled, several
/// publications in one write when one read brought several. Each subscriber still gets
/// each publication once, whole and in order.
#[tokio::test]
async fn a_large_channel_gets_every_publication_in_order_when_one_read_brings_several() {
    const SUBSCRIBERS: usize = 1_100;
    const PUBLICATIONS: usize = 12;
    // Two sockets a subscriber here, and the broker's: above some machines' default.
    raise_open_files(8_192);
    let broker = TestBroker::start().await;
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for chunk in (0..SUBSCRIBERS).collect::<Vec<_>>().chunks(50) {
        let broker = &broker;
        let joined = futures_util::future::join_all(chunk.iter().map(|i| async move {
            let mut c = broker.client(&format!("user{i}"), &["chat:*"]).await;
            c.subscribe("chat:large").await;
            c
        }))
        .await;
        subscribers.extend(joined);
    }
    // Every publication in one write, so one read brings them together.
    let mut publisher = RawClient::open(broker.ws_addr).await;
    publisher
        .send(json!({"type": "connect", "token": token("publisher", &["chat:*"])}))
        .await;
    assert_eq!(publisher.recv().await["type"], "connected");
    let frames: Vec<u8> = (0..PUBLICATIONS)
        .flat_map(|n| {
            RawClient::frame(&json!({
                "type": "publish", "id": n + 1, "channel": "chat:large", "data": {"n": n}
            }))
        })
        .collect();
    publisher.send_raw(&frames).await;
    let mut offsets = Vec::new();
    while offsets.len() < PUBLICATIONS {
        let reply = publisher.recv().await;
        if reply["type"] == "published" {
            offsets.push(reply["offset"].as_u64().unwrap());
        }
    }
    offsets.sort_unstable();
    let readers = subscribers
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.messages("chat:large", PUBLICATIONS).await }));
    for got in futures_util::future::join_all(readers).await {
        let got = got.unwrap();
        assert_eq!(
            data_ns(&got),
            (0..PUBLICATIONS as u64).collect::<Vec<_>>(),
            "out of order or missing"
        );
        let got_offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(got_offsets, offsets);
    }
}
