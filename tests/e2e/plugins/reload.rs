//! Hot reload: a new version under load loses nothing; a broken one keeps the old.

use super::*;

#[tokio::test]
async fn hot_reload_under_load_loses_nothing_and_switches_behaviour() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), &misbehave_toml("")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;
    const N: usize = 300;
    let config_path = b.config_path();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            c.publish("chat:room", json!({"i": i})).await;
        }
        c
    });
    // Let some go through v1, then switch the config to v2 and reload.
    let first = sub.messages("chat:room", 20).await;
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("tag = \"v1\"", "tag = \"v2\"");
    std::fs::write(&config_path, text).unwrap();
    b.signal("HUP");
    let rest = sub.messages("chat:room", N - 20).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .unwrap()
        .unwrap();
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    let seen: Vec<u64> = all
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "every publication once, in order"
    );
    let tags: Vec<&str> = all
        .iter()
        .map(|m| m["meta"]["tag"].as_str().unwrap())
        .collect();
    let switch = tags
        .iter()
        .position(|t| *t == "v2")
        .expect("the new version took over");
    assert!(switch >= 20);
    assert!(
        tags[switch..].iter().all(|t| *t == "v2"),
        "each event ran on one version: {tags:?}"
    );
    assert!(tags[..switch].iter().all(|t| *t == "v1"));
    let view = admin(&b, "GET", "/admin/plugins").await;
    assert!(view["generation"].as_u64().unwrap() >= 2, "{view}");
}

#[tokio::test]
async fn a_broken_module_on_reload_keeps_the_old_version() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), &misbehave_toml("")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;
    let before = admin(&b, "GET", "/admin/plugins").await;
    // The watcher sees the file change and reloads; the module is refused before it is
    // compiled (it is no component), in one line.
    std::fs::write(dir.path().join("misbehave.wasm"), b"\0asm not really").unwrap();
    let deadline = deadline();
    let view = loop {
        let view = admin(&b, "GET", "/admin/plugins").await;
        if !view["failures"].as_array().unwrap().is_empty() {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not reload: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        view["plugins"][0]["sha256"], before["plugins"][0]["sha256"],
        "{view}"
    );
    assert!(
        view["last_failed_load"]["error"]
            .as_str()
            .unwrap()
            .contains("not a plugin component"),
        "{view}"
    );
    assert_eq!(
        calls_meta(&mut c, &mut sub).await,
        1,
        "the old version still runs"
    );
    // The admin endpoint says the same.
    let report = admin(&b, "POST", "/admin/plugins/reload").await;
    assert_eq!(report["failed"][0]["name"], "misbehave", "{report}");
    b.wait_logs("previous version keeps running", 1).await;
}
