use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn connects_subscribes_and_receives_its_publication() {
    let broker = TestBroker::start().await;
    let mut c = Client::open(&broker.ws_url()).await;
    assert_eq!(c.subprotocol.as_deref(), Some("hookwire.v1"));
    let r = c
        .request(json!({"type":"connect","token": token("alice", &["chat:*"])}))
        .await;
    assert_eq!(r["type"], "connected");
    assert_eq!(r["user"], "alice");
    assert!(r["client"].as_str().unwrap().starts_with("c-"));
    assert!(r["expires"].as_u64().unwrap() > 0);
    assert!(r["node"].is_string());
    let s = c.subscribe("chat:lobby").await;
    assert_eq!(s["offset"], 0);
    assert_eq!(s["recovered"], false);
    let p = c.publish("chat:lobby", json!({"text":"hi"})).await;
    assert_eq!(p["offset"], 1);
    let m = c.recv_type("message").await;
    assert_eq!(m["channel"], "chat:lobby");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["user"], "alice");
    assert_eq!(m["data"], json!({"text":"hi"}));
    assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(m.get("meta").is_none());
    let pong = c.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = Client::open_without_subprotocol(&broker.ws_url()).await;
    assert_eq!(c.subprotocol, None);
    let r = c
        .request(json!({"type": "connect", "token": token("alice", &["chat:*"])}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    c.ping().await;
}
