//! WebTransport (HTTP/3 over QUIC) end to end: a real `web-transport-quinn` client
//! against the broker's QUIC listener (`--dev`'s self-signed certificate, trusted by its
//! hash from `GET /dev/cert-hash`): the same session as WebSocket, close codes in the
//! session-close capsule, volatile datagrams, and the listener's own checks.

use serde_json::{Value, json};

use crate::harness::*;
use crate::http::{ADMIN_KEY, API_KEY, request};

/// A broker with the WebTransport listener on (self-signed, `--dev`).
async fn dev_broker() -> TestBroker {
    TestBroker::builder().arg("--dev").start().await
}

/// A WebTransport client authenticated as `sub`.
async fn wt_client(broker: &TestBroker, sub: &str, channels: &[&str]) -> Client {
    let mut c = Client::open_wt(broker).await;
    let r = c
        .request(json!({"type": "connect", "token": token(sub, channels)}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    c
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_webtransport_and_a_websocket_client_see_one_channel_in_one_order() {
    let broker = TestBroker::builder()
        .arg("--dev")
        .env("HOOKWIRE_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await;
    assert!(broker.quic_addr.is_some(), "no QUIC listener with --dev");
    let mut wt = wt_client(&broker, "wendy", &["chat:*"]).await;
    let mut ws = broker.client("walter", &["chat:*"]).await;
    wt.subscribe("chat:mixed").await;
    ws.subscribe("chat:mixed").await;
    // Both publish, interleaved: each sees every publication once, in the same order.
    const EACH: usize = 100;
    for n in 0..EACH {
        wt.send(json!({"type": "publish", "channel": "chat:mixed", "data": {"text": format!("wt {n}")}}))
            .await;
        ws.send(json!({"type": "publish", "channel": "chat:mixed", "data": {"text": format!("ws {n}")}}))
            .await;
    }
    let seen_wt = wt.messages("chat:mixed", 2 * EACH).await;
    let seen_ws = ws.messages("chat:mixed", 2 * EACH).await;
    assert_eq!(offsets(&seen_wt), offsets(&seen_ws));
    assert_eq!(offsets(&seen_wt), (1..=2 * EACH as u64).collect::<Vec<_>>());
    let texts = |m: &[Value]| {
        m.iter()
            .map(|v| v["data"]["text"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&seen_wt), texts(&seen_ws));
    // Presence and history answer over WebTransport as over WebSocket.
    let p = wt
        .request(json!({"type": "presence", "channel": "chat:mixed"}))
        .await;
    assert_eq!(p["clients"].as_array().unwrap().len(), 2, "{p}");
    let h = wt
        .request(json!({"type": "history", "channel": "chat:mixed", "limit": 3}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["publications"].as_array().unwrap().len(), 3, "{h}");
    // The plugin contract and the admin view name the transport.
    let r = request(
        broker.admin_addr,
        "GET",
        "/admin/connections",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert!(r.body.contains("\"webtransport\""), "{}", r.body);
}

#[tokio::test]
async fn a_bad_token_closes_the_session_with_4001_in_the_capsule() {
    let broker = dev_broker().await;
    let mut c = Client::open_wt(&broker).await;
    c.send(json!({"type": "connect", "token": forged_token("mallory", &["chat:*"])}))
        .await;
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert!(!closed.reason.is_empty(), "{closed:?}");

    // No `connect` within the handshake time: 4001 too.
    let broker = TestBroker::builder()
        .arg("--dev")
        .env("HOOKWIRE_LIMITS_HANDSHAKE_TIMEOUT_MS", "500")
        .start()
        .await;
    let mut c = Client::open_wt(&broker).await;
    c.send_text(r#"{"type":"ping"}"#).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
}

#[tokio::test]
async fn an_operator_disconnect_reaches_a_webtransport_client_as_4003() {
    let broker = TestBroker::builder()
        .arg("--dev")
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await;
    let mut c = wt_client(&broker, "eve", &["chat:*"]).await;
    let r = request(
        broker.admin_addr,
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        Some(r#"{"user":"eve"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let closed = c.closed().await;
    closed.assert_code(4003);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
}

#[tokio::test]
async fn the_connect_request_is_checked_like_an_upgrade() {
    let broker = TestBroker::builder()
        .arg("--dev")
        .env(
            "HOOKWIRE_CONNECTIONS_ALLOWED_ORIGINS",
            "https://app.example.com",
        )
        .start()
        .await;
    // Another path: refused before a session.
    let refused = WtWire::open(&broker, "/other", Some("https://app.example.com")).await;
    assert!(
        matches!(&refused, Err(OpenError::Refused(e)) if e.contains("404")),
        "{:?}",
        refused.err()
    );
    // An origin not on the list: refused.
    let refused = WtWire::open(&broker, "/wt", Some("https://evil.example.net")).await;
    assert!(
        matches!(&refused, Err(OpenError::Refused(e)) if e.contains("403")),
        "{:?}",
        refused.err()
    );
    // A token in the URL: the session opens only to say 4001.
    let wire = WtWire::open(&broker, "/wt?token=abc", Some("https://app.example.com"))
        .await
        .unwrap();
    let mut c = Client::from_wt(wire);
    c.send_text(r#"{"type":"ping"}"#).await;
    c.closed().await.assert_code(4001);
    // The allowed origin gets a session.
    let wire = WtWire::open(&broker, "/wt", Some("https://app.example.com"))
        .await
        .unwrap();
    let mut c = Client::from_wt(wire);
    let r = c
        .request(json!({"type": "connect", "token": token("ok", &["chat:*"])}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    broker.wait_logs("origin not allowed", 1).await;
}

#[tokio::test]
async fn a_webtransport_client_recovers_what_it_missed() {
    let broker = dev_broker().await;
    let mut publisher = broker.client("pub", &["chat:*"]).await;
    let mut first = wt_client(&broker, "rita", &["chat:*"]).await;
    let s = first.subscribe("chat:rec").await;
    let epoch = s["epoch"].clone();
    publisher.publish("chat:rec", json!({"n": 1})).await;
    let seen = first.messages("chat:rec", 1).await;
    let last = seen[0]["offset"].as_u64().unwrap();
    drop(first);
    for n in 2..=4 {
        publisher.publish("chat:rec", json!({"n": n})).await;
    }
    let mut again = wt_client(&broker, "rita", &["chat:*"]).await;
    let r = again
        .request(json!({"type": "subscribe", "channel": "chat:rec", "recover": {"offset": last, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let got: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![2, 3, 4]);
}

#[tokio::test]
async fn volatile_publications_reach_webtransport_as_datagrams_and_websocket_as_frames() {
    let broker = dev_broker().await;
    let mut wt = wt_client(&broker, "tina", &["typing:*"]).await;
    let mut ws = broker.client("tom", &["typing:*"]).await;
    wt.subscribe("typing:room").await;
    ws.subscribe("typing:room").await;
    ws.publish("typing:room", json!({"typing": true})).await;
    // The WebSocket client gets a normal frame...
    let m = ws.messages("typing:room", 1).await;
    assert_eq!(m[0]["data"]["typing"], true);
    // ...the WebTransport one a datagram, not a stream frame.
    let d = wt.wt().datagram().await;
    assert_eq!(d["type"], "message", "{d}");
    assert_eq!(d["channel"], "typing:room", "{d}");
    assert_eq!(d["user"], "tom", "{d}");
    wt.ping().await;
    assert!(
        wt.pushes.is_empty(),
        "a volatile publication came on the stream: {:?}",
        wt.pushes
    );
    // A publication too large for a datagram is refused with a reason.
    let big = "x".repeat(2_000);
    let e = wt
        .expect_error(
            json!({"type": "publish", "channel": "typing:room", "data": big}),
            "too_large",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("datagram"), "{e}");
    // No history, no recovery.
    let h = wt
        .request(json!({"type": "history", "channel": "typing:room"}))
        .await;
    assert!(
        h["type"] == "error" || h["publications"].as_array().is_some_and(Vec::is_empty),
        "{h}"
    );
}

#[tokio::test]
async fn a_webtransport_frame_over_the_limit_closes_with_1009() {
    let broker = TestBroker::builder()
        .arg("--dev")
        .env("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "4096")
        .start()
        .await;
    let mut c = wt_client(&broker, "big", &["chat:*"]).await;
    // Split across writes, no newline yet: the broker stops reading at the limit.
    let mut line = br#"{"type":"publish","channel":"chat:a","data":""#.to_vec();
    line.extend(std::iter::repeat_n(b'x', 8_000));
    c.wt().send_raw(&line).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
}

#[tokio::test]
async fn a_webtransport_client_that_does_not_read_is_cut_off_with_4009() {
    let broker = TestBroker::builder()
        .arg("--dev")
        .env("HOOKWIRE_LIMITS_OUTBOUND_QUEUE_FRAMES", "64")
        .env("HOOKWIRE_QUIC_STREAM_WINDOW_BYTES", "16384")
        .start()
        .await;
    let mut slow = wt_client(&broker, "sloth", &["chat:*"]).await;
    slow.subscribe("chat:flood").await;
    let mut fast = broker.client("hare", &["chat:*"]).await;
    fast.subscribe("chat:flood").await;
    let mut publisher = broker.client("pub", &["chat:*"]).await;
    // The slow client reads nothing: its QUIC flow-control window (the test client's
    // default) fills, then the broker's queue for it.
    let data = json!({"text": "y".repeat(8_000)});
    const N: usize = 400;
    // In rounds the reading client keeps up with (its queue is as small as the slow
    // one's), so only the client that reads nothing falls behind.
    const ROUND: usize = 16;
    let mut received = 0;
    for _ in 0..N / ROUND {
        for _ in 0..ROUND {
            publisher
                .send(json!({"type": "publish", "channel": "chat:flood", "data": data}))
                .await;
        }
        received += fast.messages("chat:flood", ROUND).await.len();
    }
    assert_eq!(received, N);
    broker.wait_log("slow consumer").await;
    // The session-close capsule says 4009; the `disconnect` push too, unless the stream
    // was cut inside a frame (then it is reset, and only the capsule speaks).
    let closed = slow.closed().await;
    assert_eq!(closed.code, Some(4009), "{closed:?}");
    assert!(closed.reason.contains("slow consumer"), "{closed:?}");
    if let Some(d) = &closed.disconnect {
        assert_eq!(d["code"], 4009, "{d}");
    }
    let got = closed
        .frames
        .iter()
        .filter(|v| v["type"] == "message")
        .count();
    assert!(got < N, "the slow client got everything");
}

#[tokio::test]
async fn draining_closes_webtransport_sessions_with_1012() {
    let mut broker = dev_broker().await;
    let mut c = wt_client(&broker, "dora", &["chat:*"]).await;
    broker.signal("TERM");
    let closed = c.closed().await;
    closed.assert_code(1012);
    assert_eq!(broker.wait_exit(WAIT).await, Some(0));
}

#[tokio::test]
async fn without_a_certificate_or_dev_the_quic_listener_stays_off() {
    let broker = TestBroker::start().await;
    assert!(broker.quic_addr.is_none());
    broker.wait_log("WebTransport is off").await;
    let (status, body) = http_get(broker.ws_addr, "/dev/cert-hash").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http_get(broker.ws_addr, "/").await;
    assert_eq!(status, 404);
    // The client library is served either way.
    let (status, body) = http_get(broker.ws_addr, "/client.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("class Hookwire"), "not the client library");
}

#[tokio::test]
async fn dev_pages_mint_a_token_and_tell_the_certificate() {
    let broker = dev_broker().await;
    broker.wait_log("DEVELOPMENT CERTIFICATE").await;
    let (hash, url) = cert_hash(broker.ws_addr).await;
    assert_eq!(hash.len(), 32);
    assert_eq!(url, format!("https://{}/wt", broker.quic_addr.unwrap()));
    // The hash in the log is the one served.
    let line = broker.wait_log("DEVELOPMENT CERTIFICATE").await;
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(line.contains(&hex), "{line}");
    let (status, body) = http_get(broker.ws_addr, "/dev/token?sub=dana").await;
    assert_eq!(status, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    let (mut c, r) = broker.connect(t["token"].as_str().unwrap()).await;
    assert_eq!(r["user"], "dana", "{r}");
    c.subscribe("chat:demo").await;
    let (status, _) = http_get(broker.ws_addr, "/dev/token?sub=no%20spaces").await;
    assert_eq!(status, 400);
    let (status, page) = http_get(broker.ws_addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "{page}"
    );
}
