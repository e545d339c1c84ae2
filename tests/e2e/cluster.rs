//! Cluster over NATS: a real `nats-server` with JetStream and broker nodes as separate
//! processes, talking to each other only through it.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::*;
use crate::http::{API_KEY, parse_prometheus, request, value};

/// A node of the cluster on `nats`, ready (connected, streams set up).
async fn node(nats: &TestNats, name: &str) -> TestBroker {
    node_with(nats, name, &[]).await
}

async fn node_with(nats: &TestNats, name: &str, env: &[(&str, &str)]) -> TestBroker {
    let mut b = TestBroker::builder()
        .env("HOOKWIRE_NATS_URL", &nats.url())
        .env("HOOKWIRE_NODE_NAME", name)
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_CLUSTER_NODE_TIMEOUT_MS", "1500")
        .env("HOOKWIRE_CLUSTER_LINGER_MS", "500")
        .env("HOOKWIRE_LIMITS_OUTBOUND_QUEUE_FRAMES", "30000")
        .env("HOOKWIRE_LIMITS_OUTBOUND_QUEUE_BYTES", "67108864");
    for (k, v) in env {
        b = b.env(k, v);
    }
    let node = b.start().await;
    wait_ready(&node).await;
    node
}

/// `POST` to the server API of `node`.
async fn post(node: &TestBroker, path: &str, body: &str) -> crate::http::Response {
    request(node.admin_addr, "POST", path, Some(API_KEY), Some(body)).await
}

/// Waits until `connect` with `token` on `node` answers `kind` (`connected` or `error`).
async fn connect_answers(node: &TestBroker, token: &str, kind: &str) {
    let until = deadline();
    loop {
        let (_, r) = node.connect(token).await;
        if r["type"] == kind {
            return;
        }
        assert!(Instant::now() < until, "connect answers {r}, not {kind}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes of the cluster on `nats`: a, b and c.
async fn three(nats: &TestNats) -> (TestBroker, TestBroker, TestBroker) {
    (
        node(nats, "a").await,
        node(nats, "b").await,
        node(nats, "c").await,
    )
}

pub(crate) async fn wait_ready(node: &TestBroker) {
    let until = deadline();
    loop {
        let (status, body) = node.admin_get("/ready").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < until, "not ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node has heard from `n` nodes.
async fn wait_nodes(nodes: &[&TestBroker], n: f64) {
    for node in nodes {
        let until = deadline();
        while metric(node, "hookwire_cluster_nodes").await != n {
            assert!(Instant::now() < until, "a node does not see {n} nodes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn metric(node: &TestBroker, name: &str) -> f64 {
    let (_, text) = node.admin_get("/metrics").await;
    let samples = parse_prometheus(&text).unwrap();
    value(&samples, name, &[]).unwrap_or(0.0)
}

fn everything() -> [&'static str; 1] {
    ["*"]
}

/// Sends `n` publishes to `channel` without waiting, ids from `first`; returns the frames
/// of their answers by id.
async fn publish_burst(c: &mut Client, channel: &str, first: u64, n: u64) -> Vec<Value> {
    for i in 0..n {
        c.send(json!({"type": "publish", "id": first + i, "channel": channel, "data": {"i": first + i}}))
            .await;
    }
    let mut answers = Vec::new();
    while (answers.len() as u64) < n {
        let v = c.recv().await;
        if v.get("id").is_some() {
            answers.push(v);
        }
    }
    answers
}

/// The next `n` messages of `channel`, however long they take within `within`.
async fn collect(c: &mut Client, channel: &str, n: usize, within: Duration) -> Vec<Value> {
    let end = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(Instant::now() < end, "only {} of {n} messages", out.len());
        let v = c.recv().await;
        if v["type"] == "message" && v["channel"] == channel {
            out.push(v);
        }
    }
    out
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn publications_reach_every_node_once_in_one_order() {
    let nats = TestNats::start();
    let (a, b, c) = three(&nats).await;
    let channel = "chat:order";
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        let mut s = n.client("reader", &everything()).await;
        s.subscribe(channel).await;
        subs.push(s);
    }
    let mut pa = a.client("writer-a", &everything()).await;
    let mut pb = b.client("writer-b", &everything()).await;
    const EACH: u64 = 5_000;
    let (ra, rb) = tokio::join!(
        publish_burst(&mut pa, channel, 1, EACH),
        publish_burst(&mut pb, channel, 100_000, EACH),
    );
    let mut acked = HashSet::new();
    for r in ra.iter().chain(&rb) {
        assert_eq!(r["type"], "published", "{r}");
        assert!(
            acked.insert(r["offset"].as_u64().unwrap()),
            "one offset each: {r}"
        );
    }
    let mut seen: Option<Vec<u64>> = None;
    for s in &mut subs {
        let got = offsets(&collect(s, channel, 2 * EACH as usize, Duration::from_secs(120)).await);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "stream order, no repeat"
        );
        assert_eq!(got.iter().copied().collect::<HashSet<_>>(), acked);
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(first, &got, "every node, one order"),
        }
        s.ping().await;
    }
    // Nothing more came: no echo, no double delivery on the publishing nodes.
    for s in &mut subs {
        s.ping().await;
        assert!(!format!("{:?}", s.request(json!({"type": "ping"})).await).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_without_history_crosses_nodes_too() {
    let nats = TestNats::start();
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/hookwire.toml"
    ))
    .unwrap()
        + "\n[namespaces.live]\nhistory_size = 0\nallow_publish = true\n";
    let start = |name: &'static str| {
        TestBroker::builder()
            .config(&config)
            .env("HOOKWIRE_NATS_URL", &nats.url())
            .env("HOOKWIRE_NODE_NAME", name)
            .env("HOOKWIRE_CLUSTER_LINGER_MS", "200")
            .start()
    };
    let a = start("a").await;
    wait_ready(&a).await;
    let b = start("b").await;
    wait_ready(&b).await;
    let mut on_a = a.client("u1", &everything()).await;
    let mut on_b = b.client("u2", &everything()).await;
    on_a.subscribe("live:x").await;
    on_b.subscribe("live:x").await;
    for i in 0..20 {
        on_a.publish("live:x", json!({"i": i})).await;
    }
    for s in [&mut on_a, &mut on_b] {
        let got = collect(s, "live:x", 20, Duration::from_secs(20)).await;
        let data: Vec<_> = got
            .iter()
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(data, (0..20).collect::<Vec<_>>(), "once each, in order");
    }
    on_a.ping().await;
    // Interest is held only while the node has subscribers (plus the linger).
    assert_eq!(metric(&b, "hookwire_cluster_channel_links").await, 1.0);
    on_b.request(json!({"type": "unsubscribe", "channel": "live:x"}))
        .await;
    let until = deadline();
    while metric(&b, "hookwire_cluster_channel_links").await != 0.0 {
        assert!(Instant::now() < until, "b still holds interest in live:x");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And taken again by the next subscriber.
    on_b.subscribe("live:x").await;
    on_a.publish("live:x", json!({"i": 99})).await;
    let again = &collect(&mut on_b, "live:x", 1, Duration::from_secs(10)).await[0];
    assert_eq!(again["data"]["i"], 99);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_recovers_exactly_on_another_node_after_kill_9() {
    let nats = TestNats::start();
    let (a, b, c) = three(&nats).await;
    let channel = "chat:recover";
    let mut client = a.client("alice", &everything()).await;
    let subscribed = client.subscribe(channel).await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    let mut writer = b.client("bob", &everything()).await;
    for i in 0..5 {
        writer.publish(channel, json!({"before": i})).await;
    }
    let seen = collect(&mut client, channel, 5, Duration::from_secs(20)).await;
    let last = seen.last().unwrap()["offset"].as_u64().unwrap();
    a.signal("KILL");
    let mut missed = Vec::new();
    for i in 0..7 {
        missed.push(
            writer.publish(channel, json!({"while_dead": i})).await["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    // Fifty clients whose node died recover on c: one read of the stream there.
    let reads_before = metric(&c, "hookwire_cluster_stream_reads_total").await;
    for n in 0..50 {
        let mut again = c.client(&format!("alice{n}"), &everything()).await;
        let r = again
            .request(json!({"type": "subscribe", "channel": channel,
                "recover": {"offset": last, "epoch": epoch}}))
            .await;
        assert_eq!(r["type"], "subscribed", "{r}");
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(
            r["epoch"],
            epoch.as_str(),
            "the stream's epoch, on every node"
        );
        let got: Vec<u64> = r["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, missed, "exactly what was missed");
    }
    let reads = metric(&c, "hookwire_cluster_stream_reads_total").await - reads_before;
    assert!(reads <= 2.0, "{reads} stream reads for 50 recoveries");
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_and_join_leave_span_the_nodes() {
    let nats = TestNats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    wait_nodes(&[&a, &b], 2.0).await;
    let channel = "chat:room";
    let mut ann = a.client("ann", &everything()).await;
    ann.subscribe(channel).await;
    let mut ben = b.client("ben", &everything()).await;
    ben.subscribe(channel).await;
    let join = ann.recv_type("join").await;
    assert_eq!(join["user"], "ben", "{join}");
    let users = |r: &Value| {
        let mut u: Vec<String> = r["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user"].as_str().unwrap().to_string())
            .collect();
        u.sort();
        u
    };
    let r = ann
        .request(json!({"type": "presence", "channel": channel}))
        .await;
    assert_eq!(users(&r), ["ann", "ben"], "{r}");
    let api = request(
        b.admin_addr,
        "GET",
        "/api/presence?channel=chat:room",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(users(&api.json()), ["ann", "ben"], "{api:?}");
    let channels = request(
        a.admin_addr,
        "GET",
        "/api/channels?scope=cluster",
        Some(API_KEY),
        None,
    )
    .await;
    let listed = channels.json()["channels"].clone();
    assert_eq!(
        listed,
        json!([{"channel": channel, "subscribers": 2}]),
        "{channels:?}"
    );
    let here = request(a.admin_addr, "GET", "/api/channels", Some(API_KEY), None).await;
    assert_eq!(here.json()["channels"][0]["subscribers"], 1, "{here:?}");
    ben.request(json!({"type": "unsubscribe", "channel": channel}))
        .await;
    let leave = ann.recv_type("leave").await;
    assert_eq!(leave["user"], "ben", "{leave}");
    // A node that dies leaves presence (its clients with it) within the node timeout.
    let mut cat = b.client("cat", &everything()).await;
    cat.subscribe(channel).await;
    ann.recv_type("join").await;
    b.signal("KILL");
    let until = deadline();
    loop {
        let r = ann
            .request(json!({"type": "presence", "channel": channel}))
            .await;
        if users(&r) == ["ann"] {
            break;
        }
        assert!(Instant::now() < until, "the dead node's client stays: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_and_revoke_act_on_every_node_and_outlive_a_restart() {
    let nats = TestNats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    wait_nodes(&[&a, &b], 2.0).await;
    let old_token = token("mallory", &everything());
    let mut on_b = b.client_with(&old_token).await;
    let r = post(&a, "/api/disconnect", r#"{"user":"mallory"}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["disconnected"], 1, "{r:?}");
    assert_eq!(on_b.closed().await.code, Some(4003));

    let mut on_b = b.client_with(&old_token).await;
    let body = format!(r#"{{"user":"mallory","until":{}}}"#, now_s() + 3600);
    let r = post(&a, "/api/revoke", &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(on_b.closed().await.code, Some(4003));
    let (_, refused) = b.connect(&old_token).await;
    assert_eq!(refused["type"], "error", "revoked on b: {refused}");
    // A node started later (its own empty data directory) learns it from NATS.
    drop(b);
    let b2 = node(&nats, "b2").await;
    connect_answers(&b2, &old_token, "error").await;
    // Lifting it lifts it everywhere.
    let r = post(&a, "/api/unrevoke", r#"{"user":"mallory"}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    connect_answers(&b2, &old_token, "connected").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_nats_client_publishes_through_ingress() {
    let nats = TestNats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut on_a = a.client("u1", &everything()).await;
    let mut on_b = b.client("u2", &everything()).await;
    on_a.subscribe("chat:ingress").await;
    on_b.subscribe("chat:ingress").await;
    let plain = nats.client().await;
    let answer = tokio::time::timeout(
        WAIT,
        plain.request(
            "hookwire.api.publish",
            r#"{"channel":"chat:ingress","data":{"from":"nats"},"key":"k1"}"#.into(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    let offset = answer["offset"].as_u64().expect("an offset");
    for c in [&mut on_a, &mut on_b] {
        let m = &collect(c, "chat:ingress", 1, Duration::from_secs(10)).await[0];
        assert_eq!(m["data"]["from"], "nats");
        assert_eq!(m["offset"], offset);
    }
    // The same key again: stored once, the first offset answered.
    let again = plain
        .request(
            "hookwire.api.publish",
            r#"{"channel":"chat:ingress","data":{"from":"nats"},"key":"k1"}"#.into(),
        )
        .await
        .unwrap();
    let again: Value = serde_json::from_slice(&again.payload).unwrap();
    assert_eq!(again["offset"], offset);
    let bad = plain
        .request("hookwire.api.publish", r#"{"channel":"nope nope"}"#.into())
        .await
        .unwrap();
    let bad: Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(bad["code"], "bad_request", "{bad}");
    on_a.ping().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_restarting_mid_traffic_loses_nothing_acknowledged() {
    let mut nats = TestNats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let channel = "chat:outage";
    let mut reader = b.client("reader", &everything()).await;
    let first = reader.subscribe(channel).await;
    let mut writer = a.client("writer", &everything()).await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..60u64 {
        if i == 20 {
            nats.kill();
            // Not ready, with the reason; the local clients stay connected.
            let until = deadline();
            loop {
                let (status, body) = a.admin_get("/ready").await;
                if status == 503 {
                    assert!(body.contains("NATS"), "{body}");
                    break;
                }
                assert!(Instant::now() < until, "still ready without NATS");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if i == 40 {
            nats.restart();
            wait_ready(&a).await;
            wait_ready(&b).await;
        }
        let r = writer
            .request(json!({"type": "publish", "channel": channel, "data": {"i": i}, "key": format!("k{i}")}))
            .await;
        match r["type"].as_str() {
            Some("published") => acked.push(r["offset"].as_u64().unwrap()),
            Some("error") => {
                assert_eq!(r["code"], "unavailable", "{r}");
                refused += 1;
            }
            _ => panic!("{r}"),
        }
    }
    assert!(refused > 0, "the outage was felt");
    assert!(acked.len() >= 40, "{} acknowledged", acked.len());
    // Every acknowledged publication reaches the reader on the other node, in order...
    let got = offsets(&collect(&mut reader, channel, acked.len(), Duration::from_secs(30)).await);
    assert_eq!(got, acked);
    // ...and is in the history.
    let h = reader
        .request(json!({"type": "history", "channel": channel, "limit": 100,
            "since": {"offset": first["offset"], "epoch": first["epoch"]}}))
        .await;
    let stored: Vec<u64> = h["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, acked, "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_jetstream_a_publish_is_unavailable_never_published() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = TestBroker::builder()
        .env("HOOKWIRE_NATS_URL", &format!("nats://127.0.0.1:{port}"))
        .start()
        .await;
    let (status, body) = a.admin_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NATS"), "{body}");
    let mut c = a.client("u", &everything()).await;
    let r = c
        .expect_error(
            json!({"type": "publish", "channel": "chat:x", "data": 1}),
            "unavailable",
        )
        .await;
    assert!(r["message"].as_str().unwrap().contains("retry"), "{r}");
    c.ping().await;
}

/// Publishes `n` publications straight into the chat stream, as fast as JetStream takes
/// them (no broker in the way), and waits for every acknowledgement.
async fn flood(nats: &TestNats, channel: &str, n: usize) {
    let js = async_nats::jetstream::new(nats.client().await);
    let subject = format!("hookwire.h.chat.{channel}");
    let mut acks = Vec::new();
    for i in 0..n {
        let payload = format!(r#"{{"d":{{"i":{i}}},"t":1}}"#);
        acks.push(js.publish(subject.clone(), payload.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_caught_up_without_a_gap() {
    let nats = TestNats::start();
    // One message of buffer: a burst overflows it.
    let b = node_with(
        &nats,
        "b",
        &[("HOOKWIRE_CLUSTER_SUBSCRIPTION_CAPACITY", "1")],
    )
    .await;
    let channel = "chat:flood";
    let mut reader = b.client("reader", &everything()).await;
    reader.subscribe(channel).await;
    // Within the stream's 100 per channel: what NATS dropped is read again from it.
    const N: usize = 90;
    flood(&nats, channel, N).await;
    let got = collect(&mut reader, channel, N, Duration::from_secs(30)).await;
    let data: Vec<u64> = got
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        data,
        (0..N as u64).collect::<Vec<_>>(),
        "every one, in order"
    );
    assert!(metric(&b, "hookwire_cluster_slow_consumers_total").await >= 1.0);
    assert!(metric(&b, "hookwire_cluster_resyncs_total").await >= 1.0);
    reader.ping().await;

    // Past what the stream keeps, the gap cannot be read again: the subscriber is told
    // to reconnect and recover (and learns `recovered: false` then).
    flood(&nats, channel, 3_000).await;
    let closed = reader.closed().await;
    let disconnect = closed.disconnect.expect("a disconnect push");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    assert!(metric(&b, "hookwire_cluster_forced_recoveries_total").await >= 1.0);
}
