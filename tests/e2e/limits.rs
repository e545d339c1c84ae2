//! Limits and bad input: frame size (1009), slow consumers (4009), malformed frames, and
//! the server keepalive.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "1024")
        .start()
        .await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    c.subscribe("chat:big").await;
    // Just under the limit is fine.
    let fits = "x".repeat(900);
    c.publish("chat:big", json!(fits)).await;
    let big = json!({"type": "publish", "channel": "chat:big", "data": "x".repeat(2000)});
    c.send(big).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert!(
        closed.disconnect.is_none(),
        "no disconnect push before 1009"
    );

    // Before `connect` too.
    let mut c = Client::open(&broker.ws_url()).await;
    c.send_text(&"y".repeat(2000)).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;

    c.send_text("{not json").await;
    let e = c.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_request");
    assert!(e.get("id").is_none(), "{e}");
    assert!(e["message"].as_str().unwrap().contains("JSON"), "{e}");
    c.ping().await;

    // A well-formed frame with a wrong field keeps its id on the error.
    c.send_text(r#"{"id":41,"type":"subscribe","channel":7}"#)
        .await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(e["id"], 41);

    c.ws()
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let e = c.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e["message"].as_str().unwrap().contains("binary"), "{e}");
    c.ping().await;

    let e = c
        .expect_error(
            json!({"type": "teleport", "channel": "chat:x"}),
            "bad_request",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("teleport"), "{e}");
    c.expect_error(json!({"channel": "chat:x"}), "bad_request")
        .await;
    c.expect_error(json!({"type": "subscribe"}), "bad_request")
        .await;
    c.expect_error(
        json!({"type": "publish", "channel": "chat:x"}),
        "bad_request",
    )
    .await;
    c.send_text(r#"[1,2,3]"#).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send_text(r#"{"id":0,"type":"ping"}"#).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send_text(r#"{"id":"seven","type":"ping"}"#).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    // A second connect on a live connection.
    c.expect_error(
        json!({"type": "connect", "token": token("alice", &[])}),
        "bad_request",
    )
    .await;

    // After all that, the connection still works end to end.
    c.ping().await;
    c.subscribe("chat:ok").await;
    let p = c.publish("chat:ok", json!({"fine": true})).await;
    assert_eq!(c.messages("chat:ok", 1).await[0]["offset"], p["offset"]);
}

#[tokio::test]
async fn malformed_first_frame_gets_bad_request_then_4001() {
    let broker = TestBroker::start().await;
    let mut c = Client::open(&broker.ws_url()).await;
    c.send_text("{not json").await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    c.closed().await.assert_code(4001);
}

/// 16 KB of payload per publication.
fn payload(n: usize) -> Value {
    json!({"n": n, "pad": "p".repeat(16 * 1024)})
}

/// A slow consumer scenario: `slow` (a tiny socket buffer) stops reading after it subscribed
/// to `chat:firehose`; a fast subscriber reads everything; a publisher sends 16 KB
/// publications, paced by the fast subscriber, until presence no longer lists `slow`
/// (at most `MAX_PUBLICATIONS`).
struct SlowConsumer {
    broker: TestBroker,
    slow: Client,
    /// Publications made.
    published: usize,
    /// (offset, n) of every publication the fast subscriber got, in order.
    fast_got: Vec<(u64, u64)>,
}

impl SlowConsumer {
    const MAX_PUBLICATIONS: usize = 2000;
    const BATCH: usize = 16;

    async fn run(builder: Builder) -> Self {
        let broker = builder
            .env("HOOKWIRE_LIMITS_OUTBOUND_QUEUE_FRAMES", "64")
            .env("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "65536")
            .start()
            .await;
        let t = token("slow", &["chat:*"]);
        let mut slow = Client::open_small_buffer(&broker.ws_url(), broker.ws_addr).await;
        let r = slow.request(json!({"type": "connect", "token": t})).await;
        let slow_id = r["client"].as_str().unwrap().to_string();
        slow.subscribe("chat:firehose").await;
        // From here on `slow` reads nothing until the test says so.

        let mut fast = broker.client("fast", &["chat:*"]).await;
        fast.subscribe("chat:firehose").await;
        let (seen_tx, mut seen_rx) = watch::channel(0usize);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let v = fast.recv().await;
                if v["type"] != "message" {
                    continue;
                }
                if v["data"] == "done" {
                    return got;
                }
                got.push((
                    v["offset"].as_u64().unwrap(),
                    v["data"]["n"].as_u64().unwrap(),
                ));
                seen_tx.send_replace(got.len());
            }
        });

        let mut publisher = broker.client("pub", &["chat:*"]).await;
        let mut published = 0;
        let mut cut_off = false;
        while published < Self::MAX_PUBLICATIONS {
            for _ in 0..Self::BATCH {
                publisher
                    .send(json!({"type": "publish", "channel": "chat:firehose", "data": payload(published)}))
                    .await;
                published += 1;
            }
            // Pace the publisher by the fast subscriber, so only the slow one falls behind.
            let target = published;
            tokio::time::timeout(WAIT, seen_rx.wait_for(|n| *n >= target))
                .await
                .expect("the fast subscriber fell behind")
                .unwrap();
            let r = publisher
                .request(json!({"type": "presence", "channel": "chat:firehose"}))
                .await;
            let clients = r["clients"].as_array().unwrap();
            if clients.iter().all(|c| c["client"] != slow_id.as_str()) {
                cut_off = true;
                break;
            }
        }
        assert!(
            cut_off,
            "the slow consumer was not cut off after {published} publications"
        );
        publisher.publish("chat:firehose", json!("done")).await;
        let fast_got = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        Self {
            broker,
            slow,
            published,
            fast_got,
        }
    }

    fn assert_fast_got_everything(&self) {
        assert_eq!(
            self.fast_got.len(),
            self.published,
            "the fast subscriber missed publications"
        );
        for (i, (offset, n)) in self.fast_got.iter().enumerate() {
            assert_eq!(*n as usize, i, "out of order");
            assert_eq!(*offset as usize, i + 1, "out of order");
        }
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_4009_while_a_fast_one_gets_everything() {
    let mut s = SlowConsumer::run(TestBroker::builder()).await;
    s.assert_fast_got_everything();

    // Now the slow client reads: a prefix of the stream in order, then 4009.
    let closed = s.slow.closed().await;
    let push = closed.disconnect.as_ref().map(|d| d["code"].clone());
    assert!(
        push == Some(json!(4009)) || closed.code == Some(4009),
        "slow consumer ended with push {push:?} and close {:?}",
        closed.code
    );
    if let Some(d) = &closed.disconnect {
        assert_eq!(d["code"], 4009, "{d}");
        assert_eq!(d["reconnect"], true, "{d}");
    }
    if let Some(code) = closed.code {
        assert_eq!(code, 4009);
    }
    let offsets: Vec<u64> = closed
        .frames
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.len() < s.published,
        "the slow client got everything"
    );
    assert!(
        offsets.iter().enumerate().all(|(i, o)| *o == i as u64 + 1),
        "the slow client's stream is not an in-order prefix"
    );
}

#[tokio::test]
async fn a_slow_consumer_that_never_reads_does_not_hold_the_broker() {
    // The broker gives the close a bounded time (the pong timeout); it must not wait for a
    // client that never reads again. Shutdown shows it: with every other client gone, the
    // broker exits without hitting the drain deadline.
    let s = SlowConsumer::run(
        TestBroker::builder()
            .env("HOOKWIRE_LIMITS_PONG_TIMEOUT_MS", "500")
            .env("HOOKWIRE_SHUTDOWN_DRAIN_MS", "8000"),
    )
    .await;
    s.assert_fast_got_everything();
    let SlowConsumer {
        mut broker, slow, ..
    } = s;
    broker.wait_logs(r#""message":"Disconnected""#, 3).await;
    let started = tokio::time::Instant::now();
    broker.signal("TERM");
    assert_eq!(broker.wait_exit(WAIT).await, Some(0));
    let logs = broker.logs().join("\n");
    assert!(!logs.contains("Drain deadline passed"), "{logs}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(slow);
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_cleaned_up() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_LIMITS_PING_INTERVAL_MS", "200")
        .env("HOOKWIRE_LIMITS_PONG_TIMEOUT_MS", "300")
        .start()
        .await;
    let mut observer = broker.client("observer", &["chat:*"]).await;
    observer.subscribe("chat:alive").await;

    let mut silent = RawClient::open(broker.ws_addr).await;
    silent
        .send(json!({"id": 1, "type": "connect", "token": token("silent", &["chat:*"])}))
        .await;
    let connected = silent.recv().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let silent_id = connected["client"].as_str().unwrap().to_string();
    silent
        .send(json!({"id": 2, "type": "subscribe", "channel": "chat:alive"}))
        .await;
    assert_eq!(silent.recv().await["type"], "subscribed");
    // From here on `silent` neither reads nor writes.

    let join = observer.recv_type("join").await;
    assert_eq!(join["client"], silent_id.as_str());
    // The observer keeps reading (and so answering pings) while it waits.
    let leave = observer.recv_type("leave").await;
    assert_eq!(leave["client"], silent_id.as_str());
    assert_eq!(leave["channel"], "chat:alive");
    let r = observer
        .request(json!({"type": "presence", "channel": "chat:alive"}))
        .await;
    let users: Vec<&str> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["observer"]);
    // The silent client's socket was closed by the server: it saw pings, then the end.
    let opcodes = silent.until_closed().await;
    assert!(opcodes.contains(&0x9), "no ping was sent: {opcodes:?}");
    // The observer, which answers pings, is still connected.
    observer.ping().await;
}
