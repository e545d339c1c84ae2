//! Operations: `/metrics` as real Prometheus text whose counters move, health and
//! readiness, graceful shutdown on SIGTERM, and SIGHUP reloads that never crash.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::http::*;

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await;
    let scrape = || async {
        let r = request(b.admin_addr, "GET", "/metrics", None, None).await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers["content-type"].starts_with("text/plain"),
            "{:?}",
            r.headers
        );
        parse_prometheus(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
    };
    let before = scrape().await;
    // Label sets are bounded: no channel or user ever appears as a label.
    let mut sub = b.client("alice", &["chat:*"]).await;
    sub.subscribe("chat:metrics").await;
    let mut publisher = b.client("bob", &["chat:*"]).await;
    for i in 0..5 {
        publisher.publish("chat:metrics", json!(i)).await;
    }
    sub.messages("chat:metrics", 5).await;
    let mut bad = Client::open(&b.ws_url()).await;
    bad.send(json!({"type":"connect","token":"not-a-jwt"}))
        .await;
    bad.closed().await;
    request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(r#"{"channel":"chat:metrics","data":1}"#),
    )
    .await;
    drop(bad);
    let get =
        |s: &[Sample], name: &str, labels: &[(&str, &str)]| value(s, name, labels).unwrap_or(0.0);
    // The refused connection is counted down once its task ends (bounded polling: no other signal).
    let mut after = scrape().await;
    for _ in 0..100 {
        // A publication's latency is recorded once its last subscriber's write returns
        // (sampled: publications written in one batch count once).
        if get(
            &after,
            "hookwire_connections",
            &[("transport", "websocket")],
        ) == 2.0
            && get(&after, "hookwire_publish_latency_seconds_count", &[]) >= 1.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = scrape().await;
    }
    assert_eq!(
        get(
            &after,
            "hookwire_connections",
            &[("transport", "websocket")]
        ),
        2.0
    );
    assert!(
        get(
            &after,
            "hookwire_connections_total",
            &[("transport", "websocket")]
        ) >= 3.0
    );
    assert_eq!(
        get(
            &after,
            "hookwire_publications_total",
            &[("source", "client")]
        ) - get(
            &before,
            "hookwire_publications_total",
            &[("source", "client")]
        ),
        5.0
    );
    assert_eq!(
        get(&after, "hookwire_publications_total", &[("source", "api")]),
        1.0
    );
    assert!(get(&after, "hookwire_deliveries_total", &[]) >= 6.0);
    assert!(
        get(
            &after,
            "hookwire_frames_received_total",
            &[("type", "publish")]
        ) >= 5.0
    );
    assert!(get(&after, "hookwire_frames_sent_total", &[("type", "message")]) >= 6.0);
    assert_eq!(
        get(
            &after,
            "hookwire_auth_failures_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    assert!(get(&after, "hookwire_publish_latency_seconds_count", &[]) >= 1.0);
    assert!(
        get(
            &after,
            "hookwire_disconnects_total",
            &[("code", "unauthorized")]
        ) >= 1.0
    );
    assert!(get(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&after, "process_cpu_seconds_total", &[]).is_some());
    for s in &after {
        for v in s.labels.values() {
            assert!(
                !v.contains("chat:") && v != "alice" && v != "bob",
                "unbounded label in {s:?}"
            );
        }
    }
}

#[tokio::test]
async fn health_and_ready() {
    let b = TestBroker::start().await;
    let h = request(b.admin_addr, "GET", "/health", None, None).await;
    assert_eq!((h.status, h.json()), (200, json!({"status":"ok"})));
    let r = request(b.admin_addr, "GET", "/ready", None, None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn sigterm_drains_every_client_with_1012_after_what_was_queued_and_exits_0() {
    let mut b = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_SHUTDOWN_DRAIN_MS", "5000")
        .start()
        .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = b.client(&format!("u{i}"), &["chat:*"]).await;
        c.subscribe("chat:drain").await;
        clients.push(c);
    }
    // A client that never reads or answers keeps the drain going for a moment, so /ready
    // can be seen at 503 while draining.
    let mut stuck = b.client("stuck", &["chat:*"]).await;
    stuck.subscribe("chat:drain").await;
    for i in 0..50 {
        let body = json!({"channel":"chat:drain","data":{"n":i}}).to_string();
        let r = request(
            b.admin_addr,
            "POST",
            "/api/publish",
            Some(API_KEY),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // Nothing has been read yet: all 50 are queued or in flight.
    let started = std::time::Instant::now();
    b.signal("TERM");
    let mut saw_503 = false;
    for _ in 0..100 {
        let r = request(b.admin_addr, "GET", "/ready", None, None).await;
        if r.status == 503 {
            assert!(r.body.contains("draining"), "{}", r.body);
            saw_503 = true;
            break;
        }
        if r.status == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_503, "/ready never answered 503 while draining");
    for c in &mut clients {
        let got = c.messages("chat:drain", 50).await;
        assert_eq!(
            data_ns(&got),
            (0..50).collect::<Vec<_>>(),
            "nothing queued before SIGTERM is lost"
        );
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(1012), "{closed:?}");
        let d = closed.disconnect.expect("disconnect push before the close");
        assert_eq!(d["code"], 1012);
        assert_eq!(d["reconnect"], true);
        assert!(d["delay_ms"].as_u64().is_some(), "{d}");
    }
    let code = b.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_millis(5_000 + 2_000),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
}

#[tokio::test]
async fn sighup_reloads_the_log_level_and_survives_a_broken_file() {
    let b = TestBroker::builder()
        .unset_env("HOOKWIRE_LOG_LEVEL")
        .start()
        .await;
    let path = b.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("level = \"info\"", "level = \"debug\"")).unwrap();
    b.signal("HUP");
    let line = b.wait_log("Reloaded log.level").await;
    assert!(line.contains("\"level\":\"debug\""), "{line}");
    std::fs::write(&path, "this is [not toml").unwrap();
    b.signal("HUP");
    b.wait_log("Reload failed").await;
    let h = request(b.admin_addr, "GET", "/health", None, None).await;
    assert_eq!(h.status, 200, "still serving after a bad reload");
    let mut c = b.client("alice", &["chat:*"]).await;
    c.ping().await;
}
