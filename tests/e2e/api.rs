//! The server HTTP API on the admin listener: every route with a good key, a bad key and
//! bad bodies; idempotent publishes; operator disconnect and revoke.

use serde_json::{Value, json};

use crate::harness::*;
use crate::http::*;

async fn broker() -> TestBroker {
    TestBroker::builder()
        .env("HOOKWIRE_API_KEY", API_KEY)
        .env("HOOKWIRE_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
}

async fn post(b: &TestBroker, path: &str, body: Value) -> Response {
    request(
        b.admin_addr,
        "POST",
        path,
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await
}

async fn get(b: &TestBroker, path: &str) -> Response {
    request(b.admin_addr, "GET", path, Some(API_KEY), None).await
}

#[tokio::test]
async fn every_route_refuses_a_missing_or_wrong_key() {
    let b = broker().await;
    let routes = [
        (
            "POST",
            "/api/publish",
            Some(r#"{"channel":"chat:a","data":1}"#),
        ),
        (
            "POST",
            "/api/broadcast",
            Some(r#"{"channels":["chat:a"],"data":1}"#),
        ),
        ("POST", "/api/disconnect", Some(r#"{"user":"a"}"#)),
        (
            "POST",
            "/api/revoke",
            Some(r#"{"user":"a","until":9999999999}"#),
        ),
        ("GET", "/api/presence?channel=chat:a", None),
        ("GET", "/api/history?channel=chat:a", None),
        ("GET", "/api/channels", None),
        ("GET", "/admin/connections", None),
    ];
    for (method, path, body) in routes {
        let r = request(b.admin_addr, method, path, None, body).await;
        r.assert_error(401, "unauthorized");
        let r = request(b.admin_addr, method, path, Some("wrong-key"), body).await;
        r.assert_error(401, "unauthorized");
        let r = request_with(
            b.admin_addr,
            method,
            path,
            Some(&format!("Bearer {API_KEY}")),
            body,
        )
        .await;
        r.assert_error(401, "unauthorized");
    }
    // The API key does not open /admin, and the admin key does not open /api.
    request(
        b.admin_addr,
        "GET",
        "/admin/connections",
        Some(API_KEY),
        None,
    )
    .await
    .assert_error(401, "unauthorized");
    request(b.admin_addr, "GET", "/api/channels", Some(ADMIN_KEY), None)
        .await
        .assert_error(401, "unauthorized");
    // No key configured at all: 401 that says which variable to set.
    let plain = TestBroker::start().await;
    let r = request(
        plain.admin_addr,
        "GET",
        "/api/channels",
        Some(API_KEY),
        None,
    )
    .await;
    r.assert_error(401, "unauthorized");
    assert!(r.body.contains("HOOKWIRE_API_KEY"), "{}", r.body);
}

#[tokio::test]
async fn publish_reaches_subscribers_and_bad_bodies_get_each_error() {
    let b = broker().await;
    let mut c = b.client("alice", &["chat:*"]).await;
    c.subscribe("chat:lobby").await;
    let r = post(
        &b,
        "/api/publish",
        json!({"channel":"chat:lobby","data":{"text":"from backend"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"channel":"chat:lobby","offset":1}));
    let m = c.recv_type("message").await;
    assert_eq!(m["data"]["text"], "from backend");
    assert!(
        m.get("user").is_none(),
        "server publications have no user: {m}"
    );
    // `data: null` is a payload.
    assert_eq!(
        post(
            &b,
            "/api/publish",
            json!({"channel":"chat:lobby","data":null})
        )
        .await
        .status,
        200
    );
    // Server publishes may go where clients may not (news), but not to unknown namespaces.
    assert_eq!(
        post(&b, "/api/publish", json!({"channel":"news:today","data":1}))
            .await
            .status,
        200
    );

    post(&b, "/api/publish", json!({"channel":"nope:x","data":1}))
        .await
        .assert_error(404, "not_found");
    post(&b, "/api/publish", json!({"channel":"bad name","data":1}))
        .await
        .assert_error(400, "bad_request");
    post(&b, "/api/publish", json!({"channel":"chat:a"}))
        .await
        .assert_error(400, "bad_request");
    post(&b, "/api/publish", json!({"data":1}))
        .await
        .assert_error(400, "bad_request");
    post(
        &b,
        "/api/publish",
        json!({"channel":"chat:a","data":1,"key":""}),
    )
    .await
    .assert_error(400, "bad_request");
    let r = request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some("{not json"),
    )
    .await;
    r.assert_error(400, "bad_request");
    let huge = json!({"channel":"chat:a","data":"x".repeat(2 << 20)}).to_string();
    request(
        b.admin_addr,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&huge),
    )
    .await
    .assert_error(413, "too_large");
    get(&b, "/api/nothing").await.assert_error(404, "not_found");
}

#[tokio::test]
async fn a_retried_publish_with_a_key_is_delivered_once_and_answers_the_first_offset() {
    let b = broker().await;
    let mut c = b.client("alice", &["chat:*"]).await;
    c.subscribe("chat:orders").await;
    let body = json!({"channel":"chat:orders","data":{"order":1},"key":"order-1"});
    let first = post(&b, "/api/publish", body.clone()).await.json();
    let again = post(&b, "/api/publish", body).await.json();
    assert_eq!(first, again);
    let other = post(
        &b,
        "/api/publish",
        json!({"channel":"chat:orders","data":{"order":2},"key":"order-2"}),
    )
    .await
    .json();
    assert_eq!(other["offset"], first["offset"].as_u64().unwrap() + 1);
    let m1 = c.recv_type("message").await;
    let m2 = c.recv_type("message").await;
    assert_eq!(m1["data"]["order"], 1);
    assert_eq!(m2["data"]["order"], 2, "the retry was not delivered again");
    // The same key from a client is deduplicated too.
    let p1 = c
        .request(json!({"type":"publish","channel":"chat:orders","data":3,"key":"k"}))
        .await;
    let p2 = c
        .request(json!({"type":"publish","channel":"chat:orders","data":3,"key":"k"}))
        .await;
    assert_eq!(p1["offset"], p2["offset"]);
}

#[tokio::test]
async fn broadcast_answers_per_channel() {
    let b = broker().await;
    let mut c = b.client("alice", &["chat:*"]).await;
    c.subscribe("chat:a").await;
    let r = post(
        &b,
        "/api/broadcast",
        json!({"channels":["chat:a","chat:b","nope:c","bad name"],"data":{"n":1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let results = r.json()["results"].clone();
    assert_eq!(results[0], json!({"channel":"chat:a","offset":1}));
    assert_eq!(results[1], json!({"channel":"chat:b","offset":1}));
    assert_eq!(results[2]["error"]["code"], "not_found");
    assert_eq!(results[3]["error"]["code"], "bad_request");
    assert_eq!(c.recv_type("message").await["data"]["n"], 1);
    post(&b, "/api/broadcast", json!({"channels":[],"data":1}))
        .await
        .assert_error(400, "bad_request");
    post(&b, "/api/broadcast", json!({"channels":"chat:a","data":1}))
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn presence_history_and_channels() {
    let b = broker().await;
    let mut spec_a = spec("alice", &["chat:*"]);
    spec_a.info = Some(json!({"name":"Alice"}));
    let mut c = b.client_with(&spec_a.sign_hs256(SECRET.as_bytes())).await;
    c.subscribe("chat:room").await;
    for i in 0..3 {
        c.publish("chat:room", json!(i)).await;
    }
    let p = get(&b, "/api/presence?channel=chat:room").await;
    assert_eq!(p.status, 200, "{p:?}");
    let p = p.json();
    assert_eq!(p["type"], "presence");
    assert_eq!(p["channel"], "chat:room");
    assert_eq!(p["clients"][0]["user"], "alice");
    assert_eq!(p["clients"][0]["info"]["name"], "Alice");
    assert!(p.get("id").is_none());
    get(&b, "/api/presence?channel=news:x")
        .await
        .assert_error(404, "not_found");
    get(&b, "/api/presence")
        .await
        .assert_error(400, "bad_request");

    let h = get(&b, "/api/history?channel=chat:room&limit=2")
        .await
        .json();
    assert_eq!(h["type"], "history");
    assert_eq!(h["offset"], 3);
    assert!(h["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3]);
    get(&b, "/api/history?channel=nope:x")
        .await
        .assert_error(404, "not_found");
    get(&b, "/api/history?channel=chat:room&limit=x")
        .await
        .assert_error(400, "bad_request");

    let ch = get(&b, "/api/channels").await.json();
    assert_eq!(
        ch,
        json!({"channels":[{"channel":"chat:room","subscribers":1}]})
    );
}

#[tokio::test]
async fn disconnect_and_revoke_close_with_4003_and_revoked_tokens_are_refused() {
    let b = broker().await;
    let mut a1 = b.client("alice", &["chat:*"]).await;
    let mut a2 = b.client("alice", &["chat:*"]).await;
    let mut bob = b.client("bob", &["chat:*"]).await;
    let r = post(&b, "/api/disconnect", json!({"user":"alice"})).await;
    assert_eq!(r.json(), json!({"disconnected": 2}));
    for c in [&mut a1, &mut a2] {
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(4003), "{closed:?}");
        let d = closed.disconnect.expect("disconnect push");
        assert_eq!(d["code"], 4003);
        assert_eq!(d["reconnect"], false);
    }
    bob.ping().await;
    post(&b, "/api/disconnect", json!({"users":"x"}))
        .await
        .assert_error(400, "bad_request");

    let old_token = token("bob", &["chat:*"]);
    let until = now_s() + 3600;
    let r = post(&b, "/api/revoke", json!({"user":"bob","until":until})).await;
    // The spec's `{}`, with fields that say what happened and what comes next.
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["until"], until, "{answer}");
    assert_eq!(answer["disconnected"], 1, "{answer}");
    let closed = bob.closed().await;
    assert_eq!(closed.code, Some(4003), "{closed:?}");
    let mut again = Client::open(&b.ws_url()).await;
    let e = again
        .request(json!({"type":"connect","token":old_token}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(again.closed().await.code, Some(4003));
    post(&b, "/api/revoke", json!({"user":"bob","until":1}))
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn admin_connections_shows_each_connection() {
    let b = broker().await;
    let mut c = b.client("alice", &["chat:*"]).await;
    c.subscribe("chat:x").await;
    c.subscribe("chat:y").await;
    let _bob = b.client("bob", &["chat:*"]).await;
    let r = request(
        b.admin_addr,
        "GET",
        "/admin/connections?user=alice",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let list = r.json()["connections"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let conn = &list[0];
    assert_eq!(conn["user"], "alice");
    assert_eq!(conn["transport"], "websocket");
    assert!(conn["client"].as_str().unwrap().starts_with("c-"));
    assert!(conn["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(conn["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(conn["subscriptions"], json!(["chat:x", "chat:y"]));
    assert_eq!(conn["queue_depth"], 0);
    let all = request(
        b.admin_addr,
        "GET",
        "/admin/connections",
        Some(ADMIN_KEY),
        None,
    )
    .await
    .json();
    assert_eq!(all["connections"].as_array().unwrap().len(), 2);
}
