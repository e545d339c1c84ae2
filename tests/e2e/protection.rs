//! Rate limits, connection limits and origin checks, each tripping at its configured
//! number, with an error a person can act on.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;

use crate::harness::*;

/// Waits out a rate window (a time-based limit has no other signal to wait for).
async fn wait_window(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn connection_frame_limit_trips_at_the_burst_and_recovers() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "2")
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_BURST", "5")
        .start()
        .await;
    let mut c = b.client("alice", &["chat:*"]).await;
    for _ in 0..5 {
        assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");
    }
    let e = c.request(json!({"type":"ping"})).await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("2 frames per second (burst 5)"),
        "{e}"
    );
    wait_window(1_100).await;
    assert_eq!(
        c.request(json!({"type":"ping"})).await["type"],
        "pong",
        "recovered after the window"
    );
}

#[tokio::test]
async fn user_publish_limit_counts_every_connection_of_the_user() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_USER_PUBLISHES_PER_SEC", "1")
        .env("HOOKWIRE_RATE_LIMITS_USER_PUBLISHES_BURST", "3")
        .start()
        .await;
    let mut a1 = b.client("alice", &["chat:*"]).await;
    let mut a2 = b.client("alice", &["chat:*"]).await;
    let mut bob = b.client("bob", &["chat:*"]).await;
    a1.publish("chat:a", json!(1)).await;
    a2.publish("chat:a", json!(2)).await;
    a1.publish("chat:a", json!(3)).await;
    let e = a2
        .request(json!({"type":"publish","channel":"chat:a","data":4}))
        .await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(e["message"].as_str().unwrap().contains("user alice"), "{e}");
    bob.publish("chat:a", json!(5)).await; // another user is not affected
    wait_window(1_100).await;
    a2.publish("chat:a", json!(6)).await;
}

#[tokio::test]
async fn channel_publish_limit_is_per_channel_and_per_namespace() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_PER_SEC", "1")
        .env("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_BURST", "2")
        .start()
        .await;
    let mut a = b.client("alice", &["chat:*"]).await;
    let mut bob = b.client("bob", &["chat:*"]).await;
    a.publish("chat:busy", json!(1)).await;
    bob.publish("chat:busy", json!(2)).await;
    let e = a
        .request(json!({"type":"publish","channel":"chat:busy","data":3}))
        .await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("channel chat:busy"),
        "{e}"
    );
    a.publish("chat:quiet", json!(4)).await;
    wait_window(1_100).await;
    a.publish("chat:busy", json!(5)).await; // recovered after the window

    // A namespace's own limit wins over the global one.
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_PER_SEC", "1")
        .env("HOOKWIRE_RATE_LIMITS_CHANNEL_PUBLISHES_BURST", "1")
        .env("HOOKWIRE_NAMESPACES_CHAT_CHANNEL_PUBLISHES_PER_SEC", "5")
        .env("HOOKWIRE_NAMESPACES_CHAT_CHANNEL_PUBLISHES_BURST", "5")
        .start()
        .await;
    let mut a = b.client("alice", &["chat:*"]).await;
    for i in 0..5 {
        a.publish("chat:busy", json!(i)).await;
    }
    let e = a
        .request(json!({"type":"publish","channel":"chat:busy","data":6}))
        .await;
    assert_eq!(e["code"], "rate_limited", "{e}");
}

#[tokio::test]
async fn a_flooding_client_is_cut_off_with_4008_while_a_well_behaved_one_gets_everything() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_PER_SEC", "5")
        .env("HOOKWIRE_RATE_LIMITS_CONNECTION_FRAMES_BURST", "10")
        .env("HOOKWIRE_RATE_LIMITS_MAX_VIOLATIONS", "5")
        .start()
        .await;
    let mut good = b.client("good", &["chat:*"]).await;
    good.subscribe("chat:room").await;
    let mut flood = b.client("flood", &["chat:*"]).await;
    for i in 0..200u64 {
        flood
            .send(json!({"type":"publish","id":i + 1,"channel":"chat:room","data":{"n":i}}))
            .await;
    }
    // The flooder sees `published` for what was accepted, rate_limited errors, then 4008.
    let mut accepted = Vec::new();
    let closed = loop {
        let next = tokio::time::timeout(WAIT, futures_util::StreamExt::next(flood.ws()))
            .await
            .expect("flooder not closed in time");
        match next {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "published" {
                    accepted.push(v["offset"].as_u64().unwrap());
                }
                if v["type"] == "disconnect" {
                    assert_eq!(v["code"], 4008, "{v}");
                    assert_eq!(v["reconnect"], true);
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(closed, Some(4008));
    assert!(
        !accepted.is_empty() && accepted.len() < 200,
        "{} accepted",
        accepted.len()
    );
    // The well-behaved client got exactly what the broker accepted, in order, and still works.
    let got: Vec<u64> = good
        .messages("chat:room", accepted.len())
        .await
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, accepted);
    good.publish("chat:room", json!("still here")).await;
    assert_eq!(good.recv_type("message").await["data"], "still here");
}

#[tokio::test]
async fn connection_limits_close_with_1013() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_CONNECTIONS_MAX", "2")
        .start()
        .await;
    let _a = b.client("a", &[]).await;
    let _b = b.client("b", &[]).await;
    let mut third = Client::open(&b.ws_url()).await;
    let closed = third.closed().await;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    let d = closed.disconnect.expect("disconnect push before the close");
    assert_eq!(d["code"], 1013);
    assert_eq!(d["reconnect"], true);
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("connection limit (2)"),
        "{d}"
    );
    drop(_a);
    // The slot comes back once the first connection is gone (bounded retries: no other signal).
    let mut ok = false;
    for _ in 0..50 {
        let mut c = Client::open(&b.ws_url()).await;
        c.send(json!({"type":"connect","id":1,"token":token("c", &[])}))
            .await;
        // While the node is still full, the first frame is the 1013 `disconnect`.
        let r = c.recv().await;
        if r["type"] == "connected" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot freed up");

    let b = TestBroker::builder()
        .env("HOOKWIRE_CONNECTIONS_MAX_PER_USER", "1")
        .start()
        .await;
    let _a = b.client("alice", &[]).await;
    let mut again = Client::open(&b.ws_url()).await;
    again
        .send(json!({"type":"connect","token":token("alice", &[])}))
        .await;
    let closed = again.closed().await;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    assert!(
        closed.disconnect.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("user alice")
    );
    let _bob = b.client("bob", &[]).await;

    let b = TestBroker::builder()
        .env("HOOKWIRE_CONNECTIONS_MAX_PER_IP", "1")
        .start()
        .await;
    let _a = b.client("alice", &[]).await;
    let mut again = Client::open(&b.ws_url()).await;
    assert_eq!(again.closed().await.code, Some(1013));
}

#[tokio::test]
async fn new_connections_per_ip_are_rate_limited_before_the_upgrade() {
    let b = TestBroker::builder()
        .env("HOOKWIRE_RATE_LIMITS_IP_CONNECTS_PER_SEC", "1")
        .env("HOOKWIRE_RATE_LIMITS_IP_CONNECTS_BURST", "2")
        .start()
        .await;
    let _a = Client::open(&b.ws_url()).await;
    let _b = Client::open(&b.ws_url()).await;
    let err = tokio_tungstenite::connect_async(b.ws_url())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 429);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("too many new connections"), "{body}");
        }
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    wait_window(1_100).await;
    let mut c = Client::open(&b.ws_url()).await; // recovered after the window
    let r = c
        .request(json!({"type":"connect","token":token("a", &[])}))
        .await;
    assert_eq!(r["type"], "connected");
}

fn with_origin(url: &str, origin: &str) -> http::Request<()> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", http::HeaderValue::from_str(origin).unwrap());
    req
}

#[tokio::test]
async fn a_cross_origin_upgrade_gets_403_before_any_frame() {
    let b = TestBroker::builder()
        .env(
            "HOOKWIRE_CONNECTIONS_ALLOWED_ORIGINS",
            "https://app.example.com,https://*.example.org",
        )
        .start()
        .await;
    for origin in [
        "https://evil.example.net",
        "https://app.example.com.evil.net",
        "http://app.example.com",
    ] {
        match tokio_tungstenite::connect_async(with_origin(&b.ws_url(), origin)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{origin}");
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                assert!(body.contains("allowed_origins"), "{body}");
            }
            other => panic!("{origin}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    for origin in ["https://app.example.com", "https://chat.example.org"] {
        let mut c = Client::open_with(with_origin(&b.ws_url(), origin)).await;
        let r = c
            .request(json!({"type":"connect","token":token("a", &[])}))
            .await;
        assert_eq!(r["type"], "connected", "{origin}");
    }
    // No Origin (a non-browser client) is allowed by default...
    let _ok = b.client("a", &[]).await;
    // ...and refused when configured so.
    let strict = TestBroker::builder()
        .env("HOOKWIRE_CONNECTIONS_ALLOW_MISSING_ORIGIN", "false")
        .start()
        .await;
    match tokio_tungstenite::connect_async(strict.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_slowloris_upgrade_is_dropped_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::builder()
        .env("HOOKWIRE_LIMITS_HANDSHAKE_TIMEOUT_MS", "500")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(b.ws_addr).await.unwrap();
    let started = std::time::Instant::now();
    let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    // One byte every 100 ms: the headers never finish within the timeout.
    let mut closed = false;
    for byte in head.iter() {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the server kept a byte-by-byte upgrade open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
