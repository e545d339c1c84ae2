//! Record and replay: real traffic captured on the admin listener, replayed through the
//! configured chain by `hookwire plugin test --namespace`.

use super::*;

#[tokio::test]
async fn captured_traffic_replays_through_the_configured_chain() {
    let dir = plugin_dir(&[(&examples(), "schema-guard"), (&examples(), "redact")]);
    let b = start(
        dir.path(),
        "[plugins.modules.schema-guard.config]\nfields.text = { type = \"string\", required = true }\n[plugins.modules.redact.config]\nwords = [\"darn\"]\n[namespaces.chat]\nplugins = [\"schema-guard\", \"redact\"]\n",
    )
    .await;
    let r = request(
        b.admin_addr,
        "POST",
        "/admin/plugins/capture",
        Some(ADMIN_KEY),
        Some(r#"{"namespace": "chat", "max_events": 4, "redact_claims": ["email"]}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut c, _) = b
        .connect(&token_with("alice", json!({"email": "alice@example.com"})))
        .await;
    c.subscribe("chat:a").await;
    c.publish("chat:a", json!({"text": "well darn"})).await;
    c.expect_error(
        json!({"type": "publish", "channel": "chat:a", "data": {"txt": 1}}),
        "rejected",
    )
    .await;
    c.publish("chat:a", json!({"text": "fine"})).await;
    c.publish("chat:a", json!({"text": "over the bound"})).await;
    let r = request(
        b.admin_addr,
        "GET",
        "/admin/plugins/capture",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", r.body);
    assert_eq!(lines[0]["hook"], "subscribe", "{}", r.body);
    assert_eq!(
        lines[1]["data"]["text"], "well darn",
        "recorded before the chain"
    );
    assert_eq!(lines[1]["claims"]["email"], "[redacted]");
    assert!(!r.body.contains("alice@example.com"));

    // Replayed through the chain the config sets up: the same decisions.
    let events = dir.path().join("captured.jsonl");
    std::fs::write(&events, &r.body).unwrap();
    let config = b.config_path();
    let plugins_dir = dir.path().to_str().unwrap();
    let (code, out) = run_hookwire(
        &[
            "plugin",
            "test",
            "--config",
            config.to_str().unwrap(),
            "--namespace",
            "chat",
            "--events",
            events.to_str().unwrap(),
        ],
        &[
            ("HOOKWIRE_PLUGINS_DIR", plugins_dir),
            ("HOOKWIRE_PLUGINS_CACHE_DIR", &cache_dir()),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let decisions: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decisions.len(), 4, "{out}");
    assert_eq!(decisions[0]["decision"], "allow", "{out}");
    assert_eq!(decisions[1]["decision"], "modify", "{out}");
    assert_eq!(decisions[1]["data"]["text"], "well ****", "{out}");
    assert_eq!(decisions[2]["decision"], "refuse", "{out}");
    assert_eq!(decisions[3]["decision"], "allow", "{out}");
}
