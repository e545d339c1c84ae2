//! Hardening at the edge, attacked through the real binary: stalled upgrades against the
//! handshake caps (and a burst from one address waiting for them), binary and ping floods, hand-built broken frames (1002, 1007), deep
//! `data`, long names, secrets in `RUST_LOG=trace` logs, and forged log lines.
//!
//! Each test asserts what the server kept (its metrics, its history, its log lines), not
//! only what it answered.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::http::*;

/// The value of one sample on `/metrics` (0 when the labelled child does not exist yet).
async fn metric(b: &TestBroker, name: &str, label: (&str, &str)) -> f64 {
    let r = request(b.admin_addr, "GET", "/metrics", None, None).await;
    parse_prometheus(&r.body)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .map_or(0.0, |s| s.value)
}

/// Waits (bounded) until a metric reaches `at_least`; returns its value.
async fn wait_metric(b: &TestBroker, name: &str, label: (&str, &str), at_least: f64) -> f64 {
    let deadline = deadline();
    loop {
        let v = metric(b, name, label).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{}={:?}}} is {v}, expected at least {at_least}",
            label.0,
            label.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sockets closed at accept for their address's handshake limit.
async fn refused_for_ip_handshakes(b: &TestBroker) -> f64 {
    metric(b, "hookwire_rate_limited_total", ("limit", "ip_handshakes")).await
}

/// A TCP connection to `to` from the loopback address `from` (another source IP on lo).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect")
}

#[tokio::test]
async fn stalled_upgrades_are_capped_and_a_normal_client_still_connects_within_a_second() {
    // The shipped limits: 100 handshakes per source IP, 1000 per node.
    let b = TestBroker::start().await;
    const ATTACKERS: usize = 500;
    let mut stalled = Vec::with_capacity(ATTACKERS);
    for _ in 0..ATTACKERS {
        let mut s = connect_from("127.0.0.2", b.ws_addr).await;
        // Half an upgrade request, then nothing: a slowloris.
        let _ = s
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")
            .await;
        stalled.push(s);
    }
    // The server runs 100 of them, lets 100 more wait for a slot of their address, and
    // closed the other 300 at accept.
    let refused = wait_metric(
        &b,
        "hookwire_rate_limited_total",
        ("limit", "ip_handshakes"),
        300.0,
    )
    .await;
    assert_eq!(refused, 300.0);
    let waiting = wait_metric(&b, "hookwire_handshakes", ("state", "waiting"), 100.0).await;
    assert_eq!(waiting, 100.0);

    let started = std::time::Instant::now();
    let mut c = Client::open(&b.ws_url()).await;
    let reply = c
        .request(json!({"type": "connect", "token": token("alice", &["chat:*"])}))
        .await;
    let took = started.elapsed();
    assert_eq!(reply["type"], "connected", "{reply}");
    assert!(took < Duration::from_secs(1), "connected after {took:?}");
    println!("a normal client connected in {took:?} beside {ATTACKERS} stalled upgrades");
    // Still 300: the normal client came from another address and was not refused.
    assert_eq!(refused_for_ip_handshakes(&b).await, 300.0);
    drop(stalled);
}

#[tokio::test]
async fn over_its_address_handshake_limit_a_socket_waits_for_a_slot_then_connects() {
    // One handshake at a time per address; the sweep samples the gauges every 50 ms.
    let b = TestBroker::builder()
        .env("HOOKWIRE_CONNECTIONS_MAX_HANDSHAKES_PER_IP", "1")
        .env("HOOKWIRE_HISTORY_SWEEP_INTERVAL_MS", "50")
        .start()
        .await;
    let mut stalled = connect_from("127.0.0.3", b.ws_addr).await;
    let _ = stalled.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    wait_metric(&b, "hookwire_handshakes", ("state", "running"), 1.0).await;
    // A client from the same address, as a burst behind a NAT would be: it waits.
    let socket = connect_from("127.0.0.3", b.ws_addr).await;
    let url = b.ws_url();
    let opening = tokio::spawn(async move { Client::open_over(&url, socket).await });
    wait_metric(&b, "hookwire_handshakes", ("state", "waiting"), 1.0).await;
    assert_eq!(
        refused_for_ip_handshakes(&b).await,
        0.0,
        "waiting, not refused"
    );
    // The stalled socket goes away; its slot goes to the waiting one, which connects.
    drop(stalled);
    let mut c = tokio::time::timeout(WAIT, opening)
        .await
        .expect("the waiting socket was served")
        .unwrap();
    let reply = c
        .request(json!({"type": "connect", "token": token("nat", &["chat:*"])}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
}

/// A broker whose connections may send 5 frames a second (burst 10) and get 5 violations.
async fn strict_frames() -> TestBroker {
    TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "5")
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_BURST", "10")
        .env("HOOKWIRE_RATE_LIMITS_MAX_VIOLATIONS", "5")
        .start()
        .await
}

#[tokio::test]
async fn a_binary_frame_flood_ends_in_4008() {
    let b = strict_frames().await;
    let mut c = b.client("flood", &["chat:*"]).await;
    for _ in 0..200 {
        if c.ws()
            .send(Message::Binary(vec![0u8; 16].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_cut_off_for_frames(&b, &mut c).await;
}

/// The flood ended in 4008, counted as frame-rate violations, once.
async fn assert_cut_off_for_frames(b: &TestBroker, c: &mut Client) {
    c.closed().await.assert_code(4008);
    assert!(
        metric(
            b,
            "hookwire_rate_limited_total",
            ("limit", "connection_frames")
        )
        .await
            >= 5.0
    );
    assert_eq!(
        metric(b, "hookwire_disconnects_total", ("code", "rate_limited")).await,
        1.0
    );
}

#[tokio::test]
async fn a_ping_frame_flood_ends_in_4008() {
    let b = strict_frames().await;
    let mut c = b.client("flood", &["chat:*"]).await;
    for _ in 0..200 {
        if c.ws()
            .send(Message::Ping(vec![1u8; 8].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_cut_off_for_frames(&b, &mut c).await;
}

#[tokio::test]
async fn a_connect_name_over_256_bytes_gets_bad_request_and_4001() {
    let b = TestBroker::start().await;
    let mut c = Client::open(&b.ws_url()).await;
    let reply = c
        .request(json!({
            "type": "connect",
            "token": token("alice", &["chat:*"]),
            "name": "n".repeat(257),
        }))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    c.closed().await.assert_code(4001);
    // Exactly 256 is fine, and the session is there.
    let mut c = Client::open(&b.ws_url()).await;
    let reply = c
        .request(json!({
            "type": "connect",
            "token": token("alice", &["chat:*"]),
            "name": "n".repeat(256),
        }))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    b.wait_log(&"n".repeat(256)).await;
}

/// A connected raw client (it answers nothing by itself).
async fn raw_connected(b: &TestBroker) -> RawClient {
    let mut c = RawClient::open(b.ws_addr).await;
    c.send(json!({"type": "connect", "token": token("alice", &["chat:*"])}))
        .await;
    assert_eq!(c.recv().await["type"], "connected");
    c
}

/// A client frame built by hand: `first` (FIN, RSV, opcode), masked with a zero mask
/// unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn broken_frames_close_with_1002_and_invalid_utf8_with_1007() {
    let b = TestBroker::start().await;
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("unmasked", frame(0x81, br#"{"type":"ping"}"#, false), 1002),
        ("rsv1 set", frame(0xC1, br#"{"type":"ping"}"#, true), 1002),
        ("fragmented ping", frame(0x09, b"hi", true), 1002),
        (
            "invalid utf-8",
            frame(0x81, &[b'"', 0xff, 0xfe, b'"'], true),
            1007,
        ),
    ];
    for (what, bytes, code) in &cases {
        let mut c = raw_connected(&b).await;
        c.send_raw(bytes).await;
        assert_eq!(c.close_code().await, Some(*code), "{what}");
    }
    // Before `connect` as well.
    let mut c = RawClient::open(b.ws_addr).await;
    c.send_raw(&frame(0x81, b"{}", false)).await;
    assert_eq!(c.close_code().await, Some(1002), "unmasked before connect");

    // The server counted each close under its code.
    assert_eq!(
        metric(&b, "hookwire_disconnects_total", ("code", "protocol_error")).await,
        4.0
    );
    assert_eq!(
        metric(&b, "hookwire_disconnects_total", ("code", "invalid_data")).await,
        1.0
    );
    // And it still serves.
    b.client("bob", &["chat:*"]).await;
}

#[tokio::test]
async fn data_nested_deeper_than_64_is_refused_and_not_kept() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await;
    let mut c = b.client("alice", &["chat:*"]).await;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let frame = format!(
        r#"{{"type":"publish","id":5,"channel":"chat:deep","data":{}}}"#,
        deep(65)
    );
    c.send_text(&frame).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(e["id"], 5);
    // Brackets inside a string do not count.
    let in_string = json!({"text": "[".repeat(1000)});
    c.publish("chat:deep", in_string.clone()).await;
    let body = format!(r#"{{"channel":"chat:deep","data":{}}}"#, deep(65));
    let r = request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&body),
    )
    .await;
    r.assert_error(400, "bad_request");
    // History kept only the flat publication.
    let h = c
        .request(json!({"type": "history", "channel": "chat:deep"}))
        .await;
    let kept = h["publications"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{h}");
    assert_eq!(kept[0]["data"], in_string);
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_rust_log_trace() {
    const WRONG_KEY: &str = "e2e-wrong-key-that-must-not-be-logged";
    let b = TestBroker::builder()
        .env(
            "RUST_LOG",
            "trace,tungstenite=trace,tokio_tungstenite::compat=trace",
        )
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await;
    let first = token("alice", &["chat:*"]);
    let second =
        sign_claims(&json!({"sub": "alice", "exp": now_s() + 7200, "channels": ["chat:*"]}));
    let mut c = b.client_with(&first).await;
    c.subscribe("chat:secrets").await;
    let r = c.request(json!({"type": "refresh", "token": second})).await;
    assert_eq!(r["type"], "refreshed", "{r}");
    let body = r#"{"channel":"chat:secrets","data":"hello"}"#;
    let r = request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    c.recv_type("message").await;
    let r = request(
        b.admin_addr,
        "GET",
        "/admin/connections",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Failed key attempts are logged (without the key) and counted.
    let r = request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(WRONG_KEY),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = request(
        b.admin_addr,
        "GET",
        "/admin/connections",
        Some(WRONG_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = request(b.admin_addr, "GET", "/admin/connections", None, None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        metric(&b, "hookwire_auth_failures_total", ("reason", "api_key")).await,
        1.0
    );
    assert_eq!(
        metric(&b, "hookwire_auth_failures_total", ("reason", "admin_key")).await,
        2.0
    );
    b.wait_logs("Refused an API request", 3).await;
    // The refresh is logged at debug: trace output was on all along.
    b.wait_log("Token refreshed").await;

    let logs = b.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"TRACE\"") || l.contains("\"DEBUG\""))
    );
    for (what, secret) in [
        ("connect token", first.as_str()),
        ("refresh token", second.as_str()),
        ("JWT secret", SECRET),
        ("API key", API_KEY),
        ("admin key", ADMIN_KEY),
        ("wrong key", WRONG_KEY),
    ] {
        // A token's signature alone would be enough to tell.
        let tail = &secret[secret.len().saturating_sub(20)..];
        let leaked: Vec<&String> = logs.iter().filter(|l| l.contains(tail)).collect();
        assert!(leaked.is_empty(), "the {what} is in the logs: {leaked:#?}");
    }
    println!(
        "{} log lines at RUST_LOG=trace, no secret among them",
        logs.len()
    );
}

#[tokio::test]
async fn a_newline_in_sub_is_logged_escaped_on_one_line() {
    let b = TestBroker::builder().text_logs().start().await;
    let forged = sign_claims(&json!({
        "sub": "evil\nINFO forged line",
        "exp": now_s() + 3600,
        "channels": ["chat:*"],
    }));
    let c = b.client_with(&forged).await;
    let line = b.wait_log("Connected").await;
    assert!(line.contains(r#"user="evil\nINFO forged line""#), "{line}");
    drop(c);
    b.wait_log("Disconnected").await;
    let forged_lines: Vec<String> = b
        .logs()
        .into_iter()
        .filter(|l| l.trim_start().starts_with("INFO forged"))
        .collect();
    assert!(
        forged_lines.is_empty(),
        "a forged log line: {forged_lines:#?}"
    );
    assert_eq!(b.count_logs(r#"user="evil\nINFO forged line""#), 2);
}
