//! Presence, and `join`/`leave` pushes with the token's `info` claim.

use serde_json::{Value, json};

use crate::harness::*;

fn with_info(sub: &str, info: Value) -> String {
    let mut s = spec(sub, &["chat:*"]);
    s.info = Some(info);
    s.sign_hs256(SECRET.as_bytes())
}

/// The presence of `channel` as (client, user, info), sorted by user.
async fn presence(c: &mut Client, channel: &str) -> Vec<(String, String, Value)> {
    let r = c
        .request(json!({"type": "presence", "channel": channel}))
        .await;
    assert_eq!(r["type"], "presence", "{r}");
    assert_eq!(r["channel"], channel);
    let mut out: Vec<_> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["client"].as_str().unwrap().to_string(),
                e["user"].as_str().unwrap().to_string(),
                e["info"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

#[tokio::test]
async fn presence_and_join_show_the_info_claim_and_disconnect_leaves_every_channel() {
    let broker = TestBroker::start().await;
    let (mut bob, connected) = broker.connect(&token("bob", &["chat:*"])).await;
    let bob_id = connected["client"].as_str().unwrap().to_string();
    bob.subscribe("chat:p").await;
    bob.subscribe("chat:q").await;

    let alice_info = json!({"name": "Alice", "color": "teal"});
    let (mut alice, connected) = broker
        .connect(&with_info("alice", alice_info.clone()))
        .await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let alice_id = connected["client"].as_str().unwrap().to_string();
    alice.subscribe("chat:p").await;
    let join = bob.recv_type("join").await;
    assert_eq!(join["channel"], "chat:p");
    assert_eq!(join["client"], alice_id.as_str());
    assert_eq!(join["user"], "alice");
    assert_eq!(join["info"], alice_info);
    alice.subscribe("chat:q").await;
    let join = bob.recv_type("join").await;
    assert_eq!(join["channel"], "chat:q");

    let expected = vec![
        ("alice".to_string(), alice_info.clone(), alice_id.clone()),
        ("bob".to_string(), json!({}), bob_id.clone()),
    ];
    for c in [&mut alice, &mut bob] {
        let got: Vec<_> = presence(c, "chat:p")
            .await
            .into_iter()
            .map(|(client, user, info)| (user, info, client))
            .collect();
        assert_eq!(got, expected);
    }
    // The subscriber itself is not told about its own join, and a join goes only to
    // those already there.
    alice.ping().await;
    assert!(
        alice.pushes.iter().all(|v| v["type"] != "join"),
        "{:?}",
        alice.pushes
    );

    // A disconnect leaves every channel the client was in.
    drop(alice);
    let mut left = Vec::new();
    for _ in 0..2 {
        let leave = bob.recv_type("leave").await;
        assert_eq!(leave["client"], alice_id.as_str());
        assert_eq!(leave["user"], "alice");
        left.push(leave["channel"].as_str().unwrap().to_string());
    }
    left.sort();
    assert_eq!(left, vec!["chat:p", "chat:q"]);
    let after = presence(&mut bob, "chat:q").await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, "bob");
}

#[tokio::test]
async fn unsubscribe_sends_leave_and_presence_follows() {
    let broker = TestBroker::start().await;
    let mut a = broker.client("alice", &["chat:*"]).await;
    let mut b = broker.client("bob", &["chat:*"]).await;
    a.subscribe("chat:room").await;
    b.subscribe("chat:room").await;
    assert_eq!(a.recv_type("join").await["user"], "bob");
    assert_eq!(presence(&mut a, "chat:room").await.len(), 2);
    let r = b
        .request(json!({"type": "unsubscribe", "channel": "chat:room"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    let leave = a.recv_type("leave").await;
    assert_eq!(leave["user"], "bob");
    assert_eq!(leave["channel"], "chat:room");
    let now: Vec<_> = presence(&mut a, "chat:room")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(now, vec!["alice"]);
    // Presence needs subscribe permission, and the namespace must have it enabled.
    let mut outsider = broker.client("eve", &["news:*"]).await;
    outsider
        .expect_error(
            json!({"type": "presence", "channel": "chat:room"}),
            "forbidden",
        )
        .await;
    outsider
        .expect_error(
            json!({"type": "presence", "channel": "news:today"}),
            "not_found",
        )
        .await;
}

#[tokio::test]
async fn namespaces_without_join_leave_send_none() {
    let broker = TestBroker::start().await;
    let mut a = broker.client("alice", &[]).await;
    let mut b = broker.client("bob", &[]).await;
    a.subscribe("news:quiet").await;
    b.subscribe("news:quiet").await;
    drop(b);
    // The broker has cleaned up bob's session once it logs the end.
    broker
        .wait_log(r#""message":"Disconnected","client""#)
        .await;
    a.ping().await;
    assert!(a.pushes.is_empty(), "{:?}", a.pushes);
}
