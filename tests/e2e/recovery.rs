//! Offsets, epochs, recovery on re-subscribe, and history reads.

use serde_json::{Value, json};

use crate::harness::*;

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {publications}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

fn recover(channel: &str, offset: u64, epoch: &Value) -> Value {
    json!({"type": "subscribe", "channel": channel, "recover": {"offset": offset, "epoch": epoch}})
}

#[tokio::test]
async fn a_reconnecting_client_recovers_exactly_what_it_missed() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client("pub", &["chat:*"]).await;
    let mut a = broker.client("alice", &["chat:*"]).await;
    let s = a.subscribe("chat:rec").await;
    let epoch = s["epoch"].clone();
    assert!(!epoch.as_str().unwrap().is_empty(), "{s}");
    for n in 0..2 {
        publisher.publish("chat:rec", json!({"n": n})).await;
    }
    let seen = a.messages("chat:rec", 2).await;
    let last = seen[1]["offset"].as_u64().unwrap();
    drop(a);

    let mut missed = Vec::new();
    for n in 2..7 {
        let p = publisher.publish("chat:rec", json!({"n": n})).await;
        missed.push(p["offset"].as_u64().unwrap());
    }

    let mut a = broker.client("alice", &["chat:*"]).await;
    let r = a.request(recover("chat:rec", last, &epoch)).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["epoch"], epoch);
    assert_eq!(r["offset"], *missed.last().unwrap());
    assert_eq!(offsets(&r["publications"]), missed);
    for (i, p) in r["publications"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["data"], json!({"n": i + 2}));
        assert_eq!(p["channel"], "chat:rec");
        assert_eq!(p["user"], "pub");
        assert!(p["ts"].as_u64().unwrap() > 0);
        assert!(p.get("type").is_none(), "{p}");
    }
    // The live stream continues right after the recovered ones, without repeats.
    let p = publisher.publish("chat:rec", json!({"n": 7})).await;
    let next = a.messages("chat:rec", 1).await;
    assert_eq!(next[0]["offset"], p["offset"]);
    a.ping().await;
    assert!(
        a.pushes.iter().all(|v| v["type"] != "message"),
        "{:?}",
        a.pushes
    );

    // Recovering from the top: recovered, nothing to replay.
    let mut b = broker.client("bob", &["chat:*"]).await;
    let r = b
        .request(recover("chat:rec", p["offset"].as_u64().unwrap(), &epoch))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["publications"], json!([]));
}

#[tokio::test]
async fn recovery_while_publishing_loses_and_repeats_nothing() {
    const TOTAL: u64 = 300;
    let broker = TestBroker::builder()
        .env("HOOKWIRE_NAMESPACES_CHAT_HISTORY_SIZE", "1000")
        .start()
        .await;
    let mut publisher = broker.client("pub", &["chat:*"]).await;
    let mut first = broker.client("first", &["chat:*"]).await;
    let s = first.subscribe("chat:race").await;
    let epoch = s["epoch"].clone();
    for n in 1..=10 {
        publisher.publish("chat:race", json!(n)).await;
    }
    // Keep publishing while another client subscribes with recovery from offset 5.
    let pump = tokio::spawn(async move {
        for n in 11..=TOTAL {
            publisher
                .send(json!({"type": "publish", "channel": "chat:race", "data": n}))
                .await;
        }
        publisher.ping().await;
        publisher
    });
    let mut late = broker.client("late", &["chat:*"]).await;
    let r = late.request(recover("chat:race", 5, &epoch)).await;
    assert_eq!(r["recovered"], true, "{r}");
    let mut got = offsets(&r["publications"]);
    let top = r["offset"].as_u64().unwrap();
    assert_eq!(got.last().copied(), Some(top));
    let publisher = pump.await.unwrap();
    drop(publisher);
    let live = late.messages("chat:race", (TOTAL - top) as usize).await;
    got.extend(live.iter().map(|m| m["offset"].as_u64().unwrap()));
    assert_eq!(got, (6..=TOTAL).collect::<Vec<_>>());
    late.ping().await;
    assert!(late.pushes.iter().all(|v| v["type"] != "message"));
}

#[tokio::test]
async fn recovery_with_a_wrong_epoch_is_refused() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    let s = c.subscribe("chat:epoch").await;
    for n in 0..3 {
        c.publish("chat:epoch", json!(n)).await;
    }
    let mut d = broker.client("alice", &["chat:*"]).await;
    let r = d
        .request(recover("chat:epoch", 1, &json!("not-the-epoch")))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["publications"], json!([]));
    // The reply tells the real position, so the client can reload and go on from there.
    assert_eq!(r["epoch"], s["epoch"]);
    assert_eq!(r["offset"], 3);
    // It is subscribed all the same.
    c.publish("chat:epoch", json!(3)).await;
    assert_eq!(d.messages("chat:epoch", 1).await[0]["offset"], 4);
}

#[tokio::test]
async fn recovery_from_before_the_history_kept_is_refused() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_NAMESPACES_CHAT_HISTORY_SIZE", "3")
        .start()
        .await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    let s = c.subscribe("chat:short").await;
    let epoch = s["epoch"].clone();
    c.publish("chat:short", json!(0)).await;
    let mut d = broker.client("bob", &["chat:*"]).await;
    // Offset 1 is kept, then 5 more publications: only the last 3 remain.
    for n in 1..=5 {
        c.publish("chat:short", json!(n)).await;
    }
    let r = d.request(recover("chat:short", 1, &epoch)).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["publications"], json!([]));
    assert_eq!(r["offset"], 6);
    // From offset 3 the missing ones (4, 5, 6) are all kept.
    let mut e = broker.client("carol", &["chat:*"]).await;
    let r = e.request(recover("chat:short", 3, &epoch)).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(offsets(&r["publications"]), vec![4, 5, 6]);
    // An offset past the top is not recoverable either.
    let mut f = broker.client("dave", &["chat:*"]).await;
    let r = f.request(recover("chat:short", 99, &epoch)).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["publications"], json!([]));
}

#[tokio::test]
async fn history_reads_with_limit_and_since() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    for n in 1..=5 {
        c.publish("chat:hist", json!({"n": n})).await;
    }
    let h = c
        .request(json!({"type": "history", "channel": "chat:hist"}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["channel"], "chat:hist");
    assert_eq!(h["offset"], 5);
    let epoch = h["epoch"].clone();
    assert!(!epoch.as_str().unwrap().is_empty());
    assert_eq!(offsets(&h["publications"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(h["publications"][0]["data"], json!({"n": 1}));
    assert_eq!(h["publications"][0]["user"], "alice");

    let h = c
        .request(json!({"type": "history", "channel": "chat:hist", "limit": 2}))
        .await;
    assert_eq!(offsets(&h["publications"]), vec![4, 5]);
    assert_eq!(h["offset"], 5);

    let since = |offset: u64, limit: Option<u64>| {
        let mut f = json!({"type": "history", "channel": "chat:hist",
            "since": {"offset": offset, "epoch": epoch}});
        if let Some(l) = limit {
            f["limit"] = json!(l);
        }
        f
    };
    let h = c.request(since(2, None)).await;
    assert_eq!(offsets(&h["publications"]), vec![3, 4, 5]);
    let h = c.request(since(2, Some(1))).await;
    assert_eq!(offsets(&h["publications"]), vec![3]);
    let h = c.request(since(5, None)).await;
    assert_eq!(offsets(&h["publications"]), Vec::<u64>::new());
    let h = c.request(since(0, Some(0))).await;
    assert_eq!(offsets(&h["publications"]), Vec::<u64>::new());

    // A `since` in another epoch cannot be answered.
    let mut bad = since(2, None);
    bad["since"]["epoch"] = json!("other");
    let e = c.expect_error(bad, "not_found").await;
    assert!(e["message"].as_str().unwrap().contains("epoch"), "{e}");
    c.expect_error(
        json!({"type": "history", "channel": "chat:hist", "limit": -1}),
        "bad_request",
    )
    .await;

    // An empty channel: offset 0, nothing kept.
    let h = c
        .request(json!({"type": "history", "channel": "chat:empty"}))
        .await;
    assert_eq!(h["offset"], 0);
    assert_eq!(h["publications"], json!([]));
}

#[tokio::test]
async fn a_namespace_without_history_has_offset_0_and_never_recovers() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_NAMESPACES_CHAT_HISTORY_SIZE", "0")
        .start()
        .await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    let s = c.subscribe("chat:live").await;
    assert_eq!(s["offset"], 0, "{s}");
    assert_eq!(s["recovered"], false, "{s}");
    let p = c.publish("chat:live", json!("now")).await;
    assert_eq!(p["offset"], 0, "{p}");
    let m = c.messages("chat:live", 1).await;
    assert_eq!(m[0]["offset"], 0);
    assert_eq!(m[0]["data"], "now");
    let mut d = broker.client("bob", &["chat:*"]).await;
    let r = d.request(recover("chat:live", 0, &s["epoch"])).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["offset"], 0);
    assert_eq!(r["publications"], json!([]));
    let h = c
        .request(json!({"type": "history", "channel": "chat:live"}))
        .await;
    assert_eq!(h["offset"], 0, "{h}");
    assert_eq!(h["publications"], json!([]));
}
