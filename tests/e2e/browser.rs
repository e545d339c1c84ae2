//! The demo page in a real headless Chromium (Debian's `chromium`, driven through
//! playwright-core): loaded from the broker, connected over WebTransport with
//! `serverCertificateHashes`, talking with a Rust client; over WebSocket when WebTransport
//! is off; and back, with exactly what it missed, after its broker restarts.

use serde_json::json;

use crate::harness::*;

/// The page's chat messages (not history), as "user: text".
async fn live_messages(browser: &mut Browser) -> Vec<String> {
    let v = browser
        .eval(
            "window.hookwireDemo.messages.filter(m => !m.history).map(m => `${m.user}: ${m.text}`)",
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// A `--dev` broker with the shipped config and the example plugins, as the README's run
/// command starts it.
fn demo_broker() -> Builder {
    TestBroker::builder()
        .arg("--dev")
        .unset_env("HOOKWIRE_PLUGINS_ENABLED")
        .env(
            "HOOKWIRE_PLUGINS_DIR",
            crate::plugins::examples().to_str().unwrap(),
        )
        .env("HOOKWIRE_PLUGINS_CACHE_DIR", &crate::plugins::cache_dir())
}

fn page_url(broker: &TestBroker, query: &str) -> String {
    format!("http://{}/?{query}", broker.ws_addr)
}

#[tokio::test]
async fn the_demo_page_chats_over_webtransport_with_a_rust_client() {
    let broker = demo_broker().start().await;
    let mut rusty = broker.client("rusty", &["chat:*", "typing:*"]).await;
    rusty.subscribe("chat:lobby").await;
    rusty.subscribe("typing:lobby").await;
    rusty
        .publish(
            "chat:lobby",
            json!({"text": "before you came", "kind": "msg"}),
        )
        .await;
    rusty.messages("chat:lobby", 1).await;

    let mut browser = Browser::start().await;
    browser
        .open(&page_url(&broker, "user=alice&room=lobby"))
        .await;
    let transport = browser
        .wait("window.hookwireDemo.state === 'connected' && window.hookwireDemo.transport")
        .await;
    assert_eq!(transport, "webtransport");
    // History on join.
    browser
        .wait("window.hookwireDemo.messages.some(m => m.history && m.text === 'before you came')")
        .await;
    // Presence shows both.
    browser
        .wait("document.querySelector('[data-testid=presence]').textContent.includes('rusty')")
        .await;

    // The page to the Rust client...
    browser.send("hello from the browser").await;
    let m = rusty.messages("chat:lobby", 1).await;
    assert_eq!(m[0]["user"], "alice", "{}", m[0]);
    assert_eq!(m[0]["data"]["text"], "hello from the browser", "{}", m[0]);
    // ...and back.
    rusty
        .publish(
            "chat:lobby",
            json!({"text": "hello, browser", "kind": "msg"}),
        )
        .await;
    rusty.messages("chat:lobby", 1).await;
    browser
        .wait("window.hookwireDemo.messages.some(m => m.text === 'hello, browser')")
        .await;

    // Typing, both ways: the page's keystrokes reach the Rust client; the Rust client's
    // reach the page as WebTransport datagrams.
    browser.type_text("h").await;
    let t = rusty.messages("typing:lobby", 1).await;
    assert_eq!(t[0]["user"], "alice", "{}", t[0]);
    rusty.publish("typing:lobby", json!({"typing": true})).await;
    rusty.messages("typing:lobby", 1).await;
    browser
        .wait("window.hookwireDemo.typing.includes('rusty')")
        .await;

    // The schema guard's refusal, with its reason, on the page.
    browser.send(&"x".repeat(2_100)).await;
    let error = browser
        .wait("window.hookwireDemo.errors.find(e => e.includes('not sent'))")
        .await;
    let error = error.as_str().unwrap();
    assert!(error.contains("rejected"), "{error}");
    assert!(error.contains("2000"), "{error}");

    // The session-close capsule reaches the browser: a raw WebTransport session from the
    // page, with a bad token, ends with `closed` resolving to 4001 and a reason.
    let closed = browser
        .eval(
            r#"(async () => {
                const { url, hash } = await (await fetch('/dev/cert-hash')).json();
                const value = new Uint8Array(hash.match(/../g).map((h) => parseInt(h, 16)));
                const wt = new WebTransport(url, { serverCertificateHashes: [{ algorithm: 'sha-256', value }] });
                await wt.ready;
                const stream = await wt.createBidirectionalStream();
                const writer = stream.writable.getWriter();
                await writer.write(new TextEncoder().encode('{"type":"connect","id":1,"token":"not-a-token"}\n'));
                const info = await wt.closed;
                return { code: info.closeCode, reason: info.reason };
            })()"#,
        )
        .await;
    assert_eq!(closed["code"], 4001, "{closed}");
    assert!(
        !closed["reason"].as_str().unwrap_or("").is_empty(),
        "{closed}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1_000);
    browser.quit().await;
}

#[tokio::test]
async fn the_demo_page_falls_back_to_websocket_when_webtransport_is_off() {
    let broker = demo_broker()
        .env("HOOKWIRE_QUIC_ENABLED", "false")
        .start()
        .await;
    assert!(broker.quic_addr.is_none());
    let mut rusty = broker.client("rusty", &["chat:*"]).await;
    rusty.subscribe("chat:lobby").await;
    let mut browser = Browser::start().await;
    browser
        .open(&page_url(&broker, "user=bob&room=lobby"))
        .await;
    let transport = browser
        .wait("window.hookwireDemo.state === 'connected' && window.hookwireDemo.historyLoaded && window.hookwireDemo.transport")
        .await;
    assert_eq!(transport, "websocket");
    browser.send("over a WebSocket").await;
    let m = rusty.messages("chat:lobby", 1).await;
    assert_eq!(m[0]["data"]["text"], "over a WebSocket");
    rusty
        .publish("chat:lobby", json!({"text": "right back", "kind": "msg"}))
        .await;
    browser
        .wait("window.hookwireDemo.messages.some(m => m.text === 'right back')")
        .await;
    assert_eq!(
        live_messages(&mut browser).await,
        vec!["bob: over a WebSocket", "rusty: right back"]
    );
    browser.quit().await;
}

/// A free port on 127.0.0.1 for TCP and one for UDP (a restarted broker takes the same).
fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    )
}

#[tokio::test]
async fn after_its_broker_restarts_the_page_reconnects_and_recovers_exactly() {
    // History that outlives a broker: a cluster on a real nats-server. Node `a` serves the
    // page and restarts on the same ports, with the same data directory (so the same
    // development certificate); node `b` carries the Rust client meanwhile.
    let nats = TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let (ws_port, quic_port) = free_ports();
    let node_a = || {
        demo_broker()
            .env("HOOKWIRE_NATS_URL", &nats.url())
            .env("HOOKWIRE_NODE_NAME", "a")
            .env("HOOKWIRE_WS_ADDR", &format!("127.0.0.1:{ws_port}"))
            .env("HOOKWIRE_QUIC_ADDR", &format!("127.0.0.1:{quic_port}"))
            .env("HOOKWIRE_DATA_DIR", data.path().to_str().unwrap())
            .env("HOOKWIRE_SHUTDOWN_DRAIN_MS", "2000")
    };
    let mut a = node_a().start().await;
    crate::cluster::wait_ready(&a).await;
    let b = demo_broker()
        .env("HOOKWIRE_NATS_URL", &nats.url())
        .env("HOOKWIRE_NODE_NAME", "b")
        .start()
        .await;
    crate::cluster::wait_ready(&b).await;
    let mut rusty = b.client("rusty", &["chat:*"]).await;
    rusty.subscribe("chat:lobby").await;

    let mut browser = Browser::start().await;
    browser.open(&page_url(&a, "user=carol&room=lobby")).await;
    let transport = browser
        .wait("window.hookwireDemo.state === 'connected' && window.hookwireDemo.historyLoaded && window.hookwireDemo.transport")
        .await;
    assert_eq!(transport, "webtransport");
    let say = |text: &str| json!({"text": text, "kind": "msg"});
    rusty.publish("chat:lobby", say("one")).await;
    browser
        .wait("window.hookwireDemo.messages.some(m => m.text === 'one')")
        .await;

    // Node `a` stops (the page is told 1012, reconnect); two publications land meanwhile.
    a.signal("TERM");
    assert_eq!(a.wait_exit(WAIT).await, Some(0));
    browser
        .wait("window.hookwireDemo.state !== 'connected'")
        .await;
    rusty.publish("chat:lobby", say("two")).await;
    rusty.publish("chat:lobby", say("three")).await;

    // Back on the same ports: the page reconnects by itself and recovers exactly.
    let a = node_a().start().await;
    crate::cluster::wait_ready(&a).await;
    browser
        .wait_for(
            "window.hookwireDemo.messages.some(m => m.text === 'three')",
            30_000,
        )
        .await;
    rusty.publish("chat:lobby", say("four")).await;
    browser
        .wait("window.hookwireDemo.messages.some(m => m.text === 'four')")
        .await;
    assert_eq!(
        live_messages(&mut browser).await,
        vec!["rusty: one", "rusty: two", "rusty: three", "rusty: four"]
    );
    let failed = browser.eval("window.hookwireDemo.recoveries.length").await;
    assert_eq!(failed, json!(0), "the page reported a failed recovery");
    browser.quit().await;
    drop(a);
}
