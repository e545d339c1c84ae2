//! Plugins that fail, loop, overrun or misbehave, and what the broker keeps: the event
//! follows the plugin's policy, the instance is replaced, the log stays honest.

use super::*;

#[tokio::test]
async fn a_failing_plugin_is_contained_replaced_and_its_policy_applies() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    // A deadline long enough for the memory bomb to reach the cap first.
    let b = start(dir.path(), &misbehave_toml("timeout_ms = 300")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;

    assert_eq!(calls_meta(&mut c, &mut sub).await, 1);
    assert_eq!(
        calls_meta(&mut c, &mut sub).await,
        2,
        "one warm instance keeps its state"
    );

    for (what, words) in [("loop", "deadline"), ("oom", "memory"), ("trap", "trapped")] {
        let e = c
            .expect_error(
                json!({"type": "publish", "channel": "chat:room", "data": {"do": what}}),
                "rejected",
            )
            .await;
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.contains("on_error"),
            "{what}: {e}"
        );
        // The instance was replaced: the next call starts a fresh count, and traffic flows.
        assert_eq!(calls_meta(&mut c, &mut sub).await, 1, "after {what}");
    }
    let (_, metrics) = b.admin_get("/metrics").await;
    for kind in ["timeout", "memory", "trap"] {
        assert!(
            has_metric(
                &metrics,
                &format!(
                    "hookwire_plugin_errors_total{{kind=\"{kind}\",plugin=\"misbehave\",role=\"live\",version="
                ),
                1
            ),
            "{kind} not counted:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("plugin"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let view = admin(&b, "GET", "/admin/plugins").await;
    assert_eq!(view["plugins"][0]["errors"], 3, "{view}");
    assert_eq!(view["plugins"][0]["timeouts"], 1, "{view}");
    // The log lines are read from the broker's output on another thread: wait for them.
    b.wait_logs("Plugin call failed", 3).await;
}

#[tokio::test]
async fn a_fail_open_plugin_lets_the_event_through() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(
        dir.path(),
        &misbehave_toml("on_error = \"allow\"\ntimeout_ms = 5"),
    )
    .await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;
    c.publish("chat:room", json!({"do": "loop"})).await;
    let m = sub.messages("chat:room", 1).await.remove(0);
    assert_eq!(m["data"]["do"], "loop");
    assert!(m.get("meta").is_none(), "{m}");
}

#[tokio::test]
async fn a_plugin_that_imports_the_network_is_refused_at_load() {
    let dir = plugin_dir(&[(&test_plugins(), "net-import")]);
    let config = dir.path().join("hookwire.toml");
    std::fs::write(
        &config,
        "[plugins.modules.net-import]\n[namespaces.chat]\nplugins = [\"net-import\"]\n",
    )
    .unwrap();
    let (code, out) = run_hookwire(
        &["serve", "--config", config.to_str().unwrap()],
        &[
            ("HOOKWIRE_PLUGINS_DIR", dir.path().to_str().unwrap()),
            (
                "HOOKWIRE_JWT_SECRET",
                "a-test-secret-that-is-long-enough-0123456789",
            ),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("net-import")
            && out.contains("wasi:sockets/")
            && out.contains("no network access"),
        "{out}"
    );
}

#[tokio::test]
async fn a_chatty_plugin_is_rate_limited_in_the_log() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), &misbehave_toml("")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    // One line per publication, far over 100 lines/s (burst 200): most are dropped, and
    // every publication still goes through.
    const FLOOD: usize = 600;
    for _ in 0..FLOOD {
        c.publish("chat:room", json!({"do": "log"})).await;
    }
    // Then, once the rate allows a line again, it says how many were dropped.
    let deadline = crate::harness::deadline();
    while b.count_logs("earlier line(s) dropped: over 100 lines/s") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dropped-lines note"
        );
        c.publish("chat:room", json!({"do": "log"})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = b.count_logs("asked to log");
    assert!(
        (200..FLOOD).contains(&written),
        "{written} of {FLOOD}+ lines written"
    );
}

/// A plugin's log line is the plugin's text, not the log's: a newline in it is escaped,
/// so a publisher who gets a plugin to echo its text cannot forge log lines.
#[tokio::test]
async fn a_newline_in_a_plugin_log_line_is_escaped() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = broker(dir.path(), &misbehave_toml(""))
        .text_logs()
        .start()
        .await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    c.publish(
        "chat:room",
        json!({"do": "echo", "text": "hello\nERROR forged line"}),
    )
    .await;
    let line = b.wait_log("echo: hello").await;
    assert!(line.contains(r"hello\nERROR forged line"), "{line}");
    let forged: Vec<String> = b
        .logs()
        .into_iter()
        .filter(|l| l.trim_start().starts_with("ERROR forged"))
        .collect();
    assert!(forged.is_empty(), "a forged log line: {forged:#?}");
}

#[tokio::test]
async fn a_leaking_instance_is_retired_between_calls_before_an_event_fails() {
    // Each "leak" keeps 1 MiB for good; a 16 MiB cap would be met within 16 calls.
    // The instance is retired once it used half of its headroom, so no event fails.
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), &misbehave_toml("memory_mib = 16")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;
    for _ in 0..40 {
        c.publish("chat:room", json!({"do": "leak"})).await;
    }
    let got = sub.messages("chat:room", 40).await;
    let calls: Vec<u64> = got
        .iter()
        .map(|m| m["meta"]["calls"].as_u64().unwrap())
        .collect();
    // A fresh instance starts counting again: the count went back to 1 at least twice.
    assert!(
        calls.iter().skip(1).filter(|n| **n == 1).count() >= 2,
        "{calls:?}"
    );
    let view = admin(&b, "GET", "/admin/plugins").await;
    let p = &view["plugins"][0];
    assert_eq!(p["errors"], 0, "{view}");
    assert!(p["retired"].as_u64().unwrap() >= 2, "{view}");
}
