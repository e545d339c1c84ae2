//! Hardening of history and large replies (issue 10), attacked through the real binary:
//! reads of unknown channels store nothing, publications to new channels stay within the
//! node's `[history]` caps, large recoveries are paged and leave no per-connection
//! buffer behind, and a large presence is cut. Each test asserts what the server kept (RSS, `/metrics`), not only the
//! replies.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::http::{API_KEY, parse_prometheus, request};

const MIB: u64 = 1 << 20;

/// The broker's resident set, from /proc/<pid>/status.
fn rss_bytes(broker: &TestBroker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// A sample of `/metrics` (0 when absent).
async fn metric(broker: &TestBroker, name: &str, label: Option<(&str, &str)>) -> f64 {
    let r = request(broker.admin_addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    let samples = parse_prometheus(&r.body).unwrap();
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| label.is_none_or(|(k, v)| s.labels.get(k).is_some_and(|x| x == v)))
        .map_or(0.0, |s| s.value)
}

/// Polls `/metrics` until `done` holds (bounded by the harness's wait).
async fn wait_metrics<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = deadline();
    while !done().await {
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn api_publish(broker: &TestBroker, channel: &str, data: &Value) -> Value {
    let body = json!({"channel": channel, "data": data}).to_string();
    let r = request(
        broker.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// Sends `n` `history` requests on fresh random `news:` channels, pipelined in windows,
/// and checks every reply: offset 0, no publications.
async fn flood_history_reads(c: &mut Client, conn: usize, n: usize) {
    const WINDOW: usize = 500;
    let mut sent = 0;
    while sent < n {
        let batch = WINDOW.min(n - sent);
        for i in 0..batch {
            let channel = format!("news:r{conn}x{}x{}", sent + i, rand::random::<u32>());
            let frame = json!({"id": sent + i + 1, "type": "history", "channel": channel});
            c.ws()
                .feed(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
        }
        c.ws().flush().await.unwrap();
        for _ in 0..batch {
            let r = c.recv().await;
            assert_eq!(r["type"], "history", "{r}");
            assert_eq!(r["offset"], 0, "{r}");
            assert_eq!(r["publications"], json!([]), "{r}");
        }
        sent += batch;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_publications_to_new_channels_stay_within_the_history_caps() {
    const MAX_BYTES: u64 = 32 * MIB;
    const MAX_STREAMS: u64 = 1_024;
    const READS: usize = 50_000;
    const CONNS: usize = 4;
    const PUBLICATIONS: usize = 2_000;
    let broker = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_HISTORY_MAX_BYTES", &MAX_BYTES.to_string())
        .env("HOOKWIRE_HISTORY_MAX_STREAMS", &MAX_STREAMS.to_string())
        .env("HOOKWIRE_HISTORY_SWEEP_INTERVAL_MS", "100")
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "0")
        .start()
        .await;
    let mut clients = Vec::new();
    for i in 0..CONNS {
        clients.push(broker.client(&format!("reader{i}"), &[]).await);
    }
    let baseline = rss_bytes(&broker);

    // 1. 50,000 reads of channels nobody published to.
    let started = Instant::now();
    let floods = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| flood_history_reads(c, i, READS / CONNS));
    futures_util::future::join_all(floods).await;
    let reads_took = started.elapsed();
    let after_reads = rss_bytes(&broker);
    // A publication after the reads: once the sweeper counts it, it sampled after them.
    api_publish(&broker, "chat:marker", &json!("m")).await;
    wait_metrics("the marker stream", async || {
        metric(&broker, "hookwire_history_streams", None).await == 1.0
    })
    .await;
    for c in &mut clients {
        c.ping().await;
    }

    // 2. 2,000 publications of 60 KiB, each to a new channel.
    let data = json!("x".repeat(60 << 10));
    let started = Instant::now();
    for i in 0..PUBLICATIONS {
        let r = api_publish(&broker, &format!("chat:flood{i}"), &data).await;
        assert_eq!(r["offset"], 1, "{r}");
    }
    let publish_took = started.elapsed();
    // At most MAX_BYTES of 60 KiB publications stay; the rest were evicted and counted.
    let frame = 60 * 1024 + 100;
    let must_evict = (PUBLICATIONS as u64 - MAX_BYTES / frame) as f64;
    let evictions = async || {
        metric(
            &broker,
            "hookwire_history_evictions_total",
            Some(("reason", "bytes")),
        )
        .await
            + metric(
                &broker,
                "hookwire_history_evictions_total",
                Some(("reason", "streams")),
            )
            .await
    };
    wait_metrics("the evictions", async || evictions().await >= must_evict).await;
    let streams = metric(&broker, "hookwire_history_streams", None).await;
    let bytes = metric(&broker, "hookwire_history_bytes", None).await;
    let after_publications = rss_bytes(&broker);
    eprintln!(
        "history caps: RSS baseline {} KiB, after {READS} reads {} KiB ({reads_took:?}), after {PUBLICATIONS} publications {} KiB ({publish_took:?}); streams {streams}, bytes {bytes}, evictions {}",
        baseline / 1024,
        after_reads / 1024,
        after_publications / 1024,
        evictions().await,
    );
    assert!(streams <= MAX_STREAMS as f64, "{streams} streams");
    assert!(bytes <= MAX_BYTES as f64, "{bytes} bytes");
    // Reads stored nothing: 50,000 streams would be well over 4 MiB.
    assert!(
        after_reads < baseline + 4 * MIB,
        "reads grew RSS from {baseline} to {after_reads}"
    );
    // The history cap, the same again for what the allocator keeps of freed frames in its
    // per-thread arenas, and 32 MiB for the HTTP connections and the tests running beside
    // this one: 96 MiB. Without the cap the 2,000 publications alone would hold 120 MiB.
    // (Measured: 49 to 66 MiB.)
    assert!(
        after_publications < baseline + 2 * MAX_BYTES + 32 * MIB,
        "RSS grew from {baseline} to {after_publications}"
    );
    // The readers are still connected and served.
    for c in &mut clients {
        c.ping().await;
    }
}

/// Subscribes with `recover` from offset 0, then pages the rest with `history since`;
/// returns the offsets received and how many replies carried `more`.
async fn recover_everything(c: &mut Client, channel: &str, epoch: &Value) -> (Vec<u64>, usize) {
    let recover = json!({"offset": 0, "epoch": epoch});
    let r = c
        .request(json!({"type": "subscribe", "channel": channel, "recover": recover}))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    let offsets = |r: &Value| -> Vec<u64> {
        r["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let mut got = offsets(&r);
    let mut cut = 0;
    let mut reply = r;
    while reply["more"] == true {
        cut += 1;
        assert_eq!(reply["next_offset"], json!(got.last().unwrap()), "{reply}");
        let since = json!({"offset": reply["next_offset"], "epoch": epoch});
        reply = c
            .request(json!({"type": "history", "channel": channel, "since": since, "limit": 1000}))
            .await;
        assert_eq!(reply["type"], "history", "{reply}");
        got.extend(offsets(&reply));
    }
    (got, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_recoveries_are_paged_and_leave_no_buffer_behind() {
    const CONNS: usize = 100;
    const PUBLICATIONS: u64 = 24;
    let broker = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await;
    let data = json!("y".repeat(60 << 10));
    for _ in 0..PUBLICATIONS {
        api_publish(&broker, "chat:big", &data).await;
    }
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let mut c = broker.client(&format!("u{i}"), &["chat:*"]).await;
        c.ping().await;
        clients.push(c);
    }
    let epoch = clients[0]
        .request(json!({"type": "history", "channel": "chat:big", "limit": 0}))
        .await["epoch"]
        .clone();
    let idle = rss_bytes(&broker);

    let started = Instant::now();
    let expected: Vec<u64> = (1..=PUBLICATIONS).collect();
    for c in &mut clients {
        let (got, cut) = recover_everything(c, "chat:big", &epoch).await;
        assert_eq!(got, expected, "a recovery lost or repeated publications");
        assert!(cut >= 1, "a 1.4 MiB recovery must be cut at 1 MiB");
    }
    let took = started.elapsed();
    let peak = rss_bytes(&broker);

    // Every connection is alive: it answers a ping and gets the next publication.
    for c in &mut clients {
        c.ping().await;
    }
    api_publish(&broker, "chat:big", &json!("after")).await;
    for c in &mut clients {
        let m = c.messages("chat:big", 1).await;
        assert_eq!(m[0]["offset"], PUBLICATIONS + 1, "{}", m[0]);
    }
    let after = rss_bytes(&broker);
    eprintln!(
        "large recoveries: RSS idle {} KiB, right after {CONNS} recoveries {} KiB ({took:?}), settled {} KiB",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    // One reply of 1.4 MiB per connection kept in a write buffer would be 140 MiB; a
    // connection keeps no write or read buffer (frames go out through a per-thread
    // buffer), so what stays is the allocator's. Measured: 1.2 MiB (with tungstenite's
    // write buffer it was 7.5 to 8 MiB).
    assert!(
        after < idle + 4 * MIB,
        "RSS grew from {idle} to {after} after the recoveries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_reply_is_cut_at_max_reply_bytes() {
    const CONNS: usize = 100;
    let broker = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_LIMITS_MAX_REPLY_BYTES", "4096")
        .env("HOOKWIRE_NAMESPACES_CHAT_JOIN_LEAVE", "false")
        .start()
        .await;
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let mut c = broker.client(&format!("member{i}"), &["chat:*"]).await;
        c.subscribe("chat:crowd").await;
        clients.push(c);
    }
    let r = clients[0]
        .request(json!({"type": "presence", "channel": "chat:crowd"}))
        .await;
    assert_eq!(
        (&r["type"], &r["more"]),
        (&json!("presence"), &json!(true)),
        "{r}"
    );
    let listed = r["clients"].as_array().unwrap().len();
    assert!(listed > 0 && listed < CONNS, "{listed} of {CONNS} listed");
    assert!(
        r.to_string().len() < 4_096 + 200,
        "{} bytes",
        r.to_string().len()
    );
    // The server API answers alike.
    let api = request(
        broker.admin_addr,
        "GET",
        "/api/presence?channel=chat:crowd",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(api.status, 200, "{api:?}");
    assert_eq!(api.json()["more"], true, "{api:?}");
    // Everyone is still subscribed and served.
    api_publish(&broker, "chat:crowd", &json!("hello")).await;
    for c in &mut clients {
        assert_eq!(c.messages("chat:crowd", 1).await[0]["data"], "hello");
    }
}
