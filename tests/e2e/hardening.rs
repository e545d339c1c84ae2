//! Hardening against clients and token holders who try to harm others: each test attacks
//! the real binary and checks what the server kept, not only the reply.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::http::*;

async fn api_broker() -> TestBroker {
    TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .start()
        .await
}

async fn api_publish(b: &TestBroker, body: Value) -> Response {
    request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await
}

/// Idempotency keys are scoped by publisher: a member who guesses another's key cannot
/// suppress that member's publication, nor the backend's.
#[tokio::test]
async fn a_guessed_idempotency_key_suppresses_nobody_else() {
    let b = api_broker().await;
    let mut watcher = b.client("watcher", &["chat:*"]).await;
    watcher.subscribe("chat:keys").await;
    let mut mallory = b.client("mallory", &["chat:*"]).await;
    let mut alice = b.client("alice", &["chat:*"]).await;

    let first = mallory
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "mallory"}, "key": "order-42"}))
        .await;
    assert_eq!(first["type"], "published", "{first}");
    let theirs = alice
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "alice"}, "key": "order-42"}))
        .await;
    assert_eq!(theirs["type"], "published", "{theirs}");
    assert_ne!(
        theirs["offset"], first["offset"],
        "alice's publication was suppressed"
    );
    let api = api_publish(
        &b,
        json!({"channel": "chat:keys", "data": {"by": "api"}, "key": "order-42"}),
    )
    .await;
    assert_eq!(api.status, 200, "{}", api.body);
    // The publisher's own repeat is still suppressed.
    let again = alice
        .request(json!({"type": "publish", "channel": "chat:keys", "data": {"by": "alice"}, "key": "order-42"}))
        .await;
    assert_eq!(again["offset"], theirs["offset"]);

    let got = watcher.messages("chat:keys", 3).await;
    let by: Vec<&str> = got
        .iter()
        .map(|m| m["data"]["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["mallory", "alice", "api"]);
    watcher.ping().await;
    assert!(
        !watcher.pushes.iter().any(|m| m["type"] == "message"),
        "a repeat was delivered twice"
    );
}

fn claims(sub: &str, channels: &[&str], exp: u64, iat: u64) -> String {
    sign_claims(&json!({"sub": sub, "channels": channels, "exp": exp, "iat": iat}))
}

async fn presence_users(c: &mut Client, channel: &str) -> Vec<String> {
    let r = c
        .request(json!({"type": "presence", "channel": channel}))
        .await;
    assert_eq!(r["type"], "presence", "{r}");
    let mut users: Vec<String> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    users
}

/// A signed token with an absurd `exp` is honoured for a bounded time instead of
/// overflowing the clock; connect and refresh with one leave no ghost in presence.
#[tokio::test]
async fn a_huge_exp_neither_crashes_the_connection_nor_leaves_a_ghost() {
    let b = TestBroker::start().await;
    let mut watcher = b.client("watcher", &["chat:*"]).await;
    watcher.subscribe("chat:ghosts").await;
    let huge = claims("ghost", &["chat:*"], u64::MAX / 2, now_s());
    let mut ghost = b.client_with(&huge).await;
    ghost.subscribe("chat:ghosts").await;
    let r = ghost
        .request(json!({"type": "refresh", "token": claims("ghost", &["chat:*"], u64::MAX / 3, now_s())}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    ghost.ping().await;
    assert_eq!(
        presence_users(&mut watcher, "chat:ghosts").await,
        ["ghost", "watcher"]
    );
    drop(ghost);
    // The leave arrives once the connection's task has cleaned up.
    let leave = watcher.recv_type("leave").await;
    assert_eq!(leave["user"], "ghost", "{leave}");
    assert_eq!(
        presence_users(&mut watcher, "chat:ghosts").await,
        ["watcher"]
    );
    assert_eq!(b.count_logs("panicked"), 0, "{:?}", b.logs());
}

/// Revocation compares `iat` with when it was made, so a token may not date itself in
/// the future (beyond the leeway).
#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let b = TestBroker::start().await;
    let future = claims(
        "time-traveller",
        &["chat:*"],
        now_s() + 7200,
        now_s() + 3600,
    );
    let (mut c, reply) = b.connect(&future).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("iat"),
        "{reply}"
    );
    c.closed().await.assert_code(4001);
    // Within the leeway (5 s) is fine.
    let (_, ok) = b
        .connect(&claims("on-time", &["chat:*"], now_s() + 60, now_s() + 2))
        .await;
    assert_eq!(ok["type"], "connected", "{ok}");
}

/// A refresh that narrows the token's channels drops the subscriptions it no longer
/// allows, with an `unsubscribed` push saying why; the connection keeps its `sub`.
#[tokio::test]
async fn a_narrower_refresh_drops_the_channels_it_no_longer_allows() {
    let b = TestBroker::start().await;
    let mut c = b
        .client_with(&claims("alice", &["chat:*"], now_s() + 600, now_s()))
        .await;
    c.subscribe("chat:kept").await;
    c.subscribe("chat:dropped").await;
    let r = c
        .request(json!({"type": "refresh", "token": claims("alice", &["chat:kept"], now_s() + 600, now_s())}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    let pushed = c.recv_type("unsubscribed").await;
    assert_eq!(pushed["channel"], "chat:dropped", "{pushed}");
    assert!(pushed.get("id").is_none(), "{pushed}");
    assert!(
        pushed["reason"]
            .as_str()
            .unwrap()
            .contains("refreshed token"),
        "{pushed}"
    );
    let mut other = b.client("bob", &["chat:*"]).await;
    other.publish("chat:dropped", json!({"n": 1})).await;
    other.publish("chat:kept", json!({"n": 2})).await;
    let got = c.messages("chat:kept", 1).await;
    assert_eq!(got[0]["data"]["n"], 2);
    assert!(
        !c.pushes
            .iter()
            .any(|m| m["channel"] == "chat:dropped" && m["type"] == "message"),
        "a dropped channel still delivered"
    );
    assert_eq!(presence_users(&mut other, "chat:kept").await, ["alice"]);
    // A refresh for another user is still refused.
    c.expect_error(
        json!({"type": "refresh", "token": claims("mallory", &["chat:*"], now_s() + 600, now_s())}),
        "forbidden",
    )
    .await;
}

/// Revocations are kept in the data directory: after a restart the old token is still
/// refused; they can be listed and lifted, and the answer to a revoke says what next.
#[tokio::test]
async fn a_revocation_survives_a_restart_and_can_be_lifted() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let start = || {
        TestBroker::builder()
            .env("HOOKWIRE_API_KEY", API_KEY)
            .env("HOOKWIRE_DATA_DIR", &data_dir)
            .start()
    };
    let old = claims("alice", &["chat:*"], now_s() + 3600, now_s() - 10);
    let mut first = start().await;
    let (mut online, ok) = first.connect(&old).await;
    assert_eq!(ok["type"], "connected", "{ok}");
    let until = now_s() + 3600;
    let r = request(
        first.admin_addr,
        "POST",
        "/api/revoke",
        Some(API_KEY),
        Some(&json!({"user": "alice", "until": until}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["persisted"], true, "{answer}");
    assert_eq!(answer["disconnected"], 1, "{answer}");
    assert!(
        answer["next"].as_str().unwrap().contains("new token"),
        "{answer}"
    );
    online.closed().await.assert_code(4003);
    first.signal("TERM");
    assert_eq!(first.wait_exit(WAIT).await, Some(0));

    let second = start().await;
    let (mut c, refused) = second.connect(&old).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    c.closed().await.assert_code(4003);
    let list = request(
        second.admin_addr,
        "GET",
        "/api/revocations",
        Some(API_KEY),
        None,
    )
    .await
    .json();
    assert_eq!(list["revocations"][0]["user"], "alice", "{list}");
    assert_eq!(list["revocations"][0]["until"], until, "{list}");
    // A token issued after the revocation is accepted at once.
    let fresh = claims("alice", &["chat:*"], now_s() + 3600, now_s() + 1);
    let (_, ok) = second.connect(&fresh).await;
    assert_eq!(ok["type"], "connected", "{ok}");
    let lifted = request(
        second.admin_addr,
        "POST",
        "/api/unrevoke",
        Some(API_KEY),
        Some(&json!({"user": "alice"}).to_string()),
    )
    .await
    .json();
    assert_eq!(lifted["lifted"], true, "{lifted}");
    let (_, ok) = second.connect(&old).await;
    assert_eq!(ok["type"], "connected", "{ok}");
}

/// Once a drain starts, publishes are answered `unavailable` (their deliveries would be
/// dropped with the connections), and the whole shutdown, admin listener included, ends
/// within `shutdown.drain_ms` even with a client that never reads and an admin request
/// that never finishes.
#[tokio::test]
async fn a_draining_node_refuses_publishes_and_stops_on_time() {
    const DRAIN_MS: u64 = 1_500;
    let mut b = TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_SHUTDOWN_DRAIN_MS", &DRAIN_MS.to_string())
        .start()
        .await;
    // A subscriber that never reads, behind a full socket: its session cannot finish
    // writing, so the drain lasts until its deadline.
    let mut stuck = Client::open_small_buffer(&b.ws_url(), b.ws_addr).await;
    let r = stuck
        .request(json!({"type": "connect", "token": token("stuck", &["chat:*"])}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    stuck.subscribe("chat:flood").await;
    let big = "x".repeat(30_000);
    for n in 0..100 {
        let r = api_publish(
            &b,
            json!({"channel": "chat:flood", "data": {"n": n, "pad": big}}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // An admin request whose headers never end.
    let mut slow_admin = tokio::net::TcpStream::connect(b.admin_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow_admin, b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    let asked = std::time::Instant::now();
    b.signal("TERM");
    let until = deadline();
    loop {
        let (status, _) = b.admin_get("/ready").await;
        if status == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "/ready never answered 503"
        );
        tokio::task::yield_now().await;
    }
    let refused = api_publish(&b, json!({"channel": "chat:other", "data": 1})).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );

    let code = b.wait_exit(Duration::from_millis(DRAIN_MS + 2_000)).await;
    let took = asked.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(DRAIN_MS + 1_000),
        "shutdown took {took:?} with drain_ms = {DRAIN_MS}"
    );
    drop(slow_admin);
}

/// The slow-consumer bound is in bytes as well as frames: a subscriber that never reads,
/// in a channel of 30 KB publications, is cut off with 4009 after about
/// `limits.outbound_queue_bytes` (plus what the kernel's socket buffers took), not after
/// 4,096 frames (120 MB); a subscriber that reads gets every publication.
#[tokio::test]
async fn a_reader_that_stalls_is_cut_off_by_bytes_while_others_get_everything() {
    const PUBLICATIONS: usize = 400;
    let b = api_broker().await;
    let mut stalled = Client::open_small_buffer(&b.ws_url(), b.ws_addr).await;
    let r = stalled
        .request(json!({"type": "connect", "token": token("stalled", &["chat:*"])}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    stalled.subscribe("chat:big").await;
    let mut fast = b.client("fast", &["chat:*"]).await;
    fast.subscribe("chat:big").await;
    let reader = tokio::spawn(async move { fast.messages("chat:big", PUBLICATIONS).await });

    let pad = "y".repeat(30_000);
    let mut cut_after = None;
    for n in 0..PUBLICATIONS {
        let r = api_publish(
            &b,
            json!({"channel": "chat:big", "data": {"n": n, "pad": pad}}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if cut_after.is_none() && n % 10 == 9 {
            let (_, metrics) = b.admin_get("/metrics").await;
            if metrics.contains("hookwire_slow_consumer_disconnects_total 1") {
                cut_after = Some(n + 1);
            }
        }
    }
    let got = reader.await.unwrap();
    assert_eq!(
        data_ns(&got),
        (0..PUBLICATIONS as u64).collect::<Vec<_>>(),
        "the reader missed some"
    );
    // 1 MiB of queue plus up to a few MiB of socket buffers: well under 4,096 frames.
    let cut_after = cut_after.expect("the stalled reader was never cut off");
    eprintln!("the stalled reader was cut off after {cut_after} publications of 30 KB");
    assert!(
        cut_after <= 250,
        "cut off only after {cut_after} publications of 30 KB"
    );
    let closed = stalled.closed().await;
    assert_eq!(closed.code, Some(4009), "{closed:?}");
}

/// A few clients toggling a subscription cannot flood a big channel: their subscribe and
/// unsubscribe requests are rate-limited per connection (then 4008), and each channel's
/// `join`/`leave` pushes are capped; the well-behaved members keep up (no 4009) and
/// their publications still arrive.
#[tokio::test]
async fn subscription_toggling_does_not_knock_a_big_channel_off() {
    const MEMBERS: usize = 1_000;
    const TOGGLERS: usize = 5;
    // 5 × 2,000 toggles would send each member 10,000 pushes: past the 4,096-frame queue.
    const TOGGLES: usize = 2_000;
    let b = TestBroker::builder()
        .unset_env("HOOKWIRE_RATE_LIMITS_CONNECTION_SUBSCRIBES_PER_SEC")
        .unset_env("HOOKWIRE_RATE_LIMITS_CHANNEL_JOIN_LEAVE_PER_SEC")
        .env("HOOKWIRE_CONNECTIONS_MAX_PER_USER", "0")
        .start()
        .await;
    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        let mut m = b.client(&format!("member{i}"), &["chat:*"]).await;
        m.subscribe("chat:crowd").await;
        members.push(m);
    }
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut m| tokio::spawn(async move { m.messages("chat:crowd", 1).await.remove(0) }))
        .collect();

    // Each toggler pipelines subscribe/unsubscribe as fast as it can.
    let mut togglers = Vec::new();
    for t in 0..TOGGLERS {
        let mut c = b.client(&format!("toggler{t}"), &["chat:*"]).await;
        togglers.push(tokio::spawn(async move {
            for n in 0..TOGGLES {
                let kind = if n % 2 == 0 {
                    "subscribe"
                } else {
                    "unsubscribe"
                };
                c.send_text(
                    &json!({"type": kind, "channel": "chat:crowd", "id": n + 1}).to_string(),
                )
                .await;
            }
            c.closed().await
        }));
    }
    for t in togglers {
        let closed = t.await.unwrap();
        assert_eq!(
            closed.code,
            Some(4008),
            "a toggler was not cut off: {closed:?}"
        );
    }

    let mut publisher = b.client("publisher", &["chat:*"]).await;
    publisher
        .publish("chat:crowd", json!({"text": "still here"}))
        .await;
    for r in readers {
        let got = r
            .await
            .expect("a member was cut off or missed the publication");
        assert_eq!(got["data"]["text"], "still here");
    }
    let (_, metrics) = b.admin_get("/metrics").await;
    assert!(
        metrics.contains("hookwire_slow_consumer_disconnects_total 0"),
        "members were cut off as slow consumers"
    );
    assert!(
        metrics.contains("hookwire_rate_limited_total{limit=\"connection_subscribes\"}"),
        "{metrics}"
    );
    let skipped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookwire_join_leave_skipped_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(skipped > 0, "no join/leave push was skipped");
}
