//! Plugins written in other languages than Rust: the Python and JavaScript examples,
//! built from the same WIT by componentize-py and ComponentizeJS.

use super::*;

const MODERATOR_PY: &str = r#"
[plugins.modules.moderator]
file = "moderator-py.wasm"
[plugins.modules.moderator.config]
words = ["spam", "scam"]
[namespaces.chat]
plugins = ["moderator"]
"#;

#[tokio::test]
async fn the_python_example_plugin_refuses_blocked_words_and_tags_the_rest() {
    let module = examples().join("moderator-py.wasm");
    assert!(
        module.exists(),
        "{} is missing: run plugins/py-moderator/build (tests/run does)",
        module.display()
    );
    let dir = plugin_dir(&[(&examples(), "moderator-py")]);
    // The debug broker compiles the ~18 MB component (CPython inside) before it listens
    // when the shared cache does not have it yet: seconds, more than the harness's
    // usual start timeout on a busy machine.
    let b = broker(dir.path(), MODERATOR_PY)
        .start_timeout(Duration::from_secs(120))
        .start()
        .await;

    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:lobby").await;

    // Refused, case-insensitively, with the word in the reason; "scam" comes from the
    // module's config (the plugin's default list has only "spam").
    for (text, word) in [("cheap SPAM here", "spam"), ("a scam, surely", "scam")] {
        let e = alice
            .expect_error(
                json!({"type": "publish", "channel": "chat:lobby", "data": {"text": text}}),
                "rejected",
            )
            .await;
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("message contains a blocked word: {word}")),
            "{e}"
        );
    }

    // Let through and tagged; the first message bob gets, so the refused ones were not
    // delivered.
    alice
        .publish("chat:lobby", json!({"text": "hello, all"}))
        .await;
    let got = bob.messages("chat:lobby", 1).await.remove(0);
    assert_eq!(got["data"], json!({"text": "hello, all"}), "{got}");
    assert_eq!(got["meta"]["moderated_by"], "moderator-py", "{got}");
    assert!(
        !bob.pushes.iter().any(|p| p["type"] == "message"),
        "{:?}",
        bob.pushes
    );

    let view = admin(&b, "GET", "/admin/plugins").await;
    let plugins = view["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1, "{view}");
    let p = &plugins[0];
    assert_eq!(p["name"], "moderator", "{view}");
    let sha256 = hookwire::plugins::engine::sha256_hex(&std::fs::read(&module).unwrap());
    assert_eq!(p["sha256"], sha256, "{view}");
    assert_eq!(p["hooks"], json!(["publish"]), "{view}");
    assert_eq!(p["namespaces"], json!(["chat"]), "{view}");
    assert!(p["calls"].as_u64().unwrap() >= 2, "{view}");
    assert_eq!(p["errors"], 0, "{view}");
}

const LINK_GUARD_JS: &str = r#"
[plugins.modules.link-guard]
file = "link-guard-js.wasm"
[plugins.modules.link-guard.config]
allow_claim = "trusted"
[namespaces.chat]
plugins = ["link-guard"]
"#;

#[tokio::test]
async fn the_javascript_example_plugin_refuses_untrusted_links_and_tags_the_rest() {
    let module = examples().join("link-guard-js.wasm");
    assert!(
        module.exists(),
        "{} is missing: run plugins/js-link-guard/build (tests/run does)",
        module.display()
    );
    let dir = plugin_dir(&[(&examples(), "link-guard-js")]);
    // A 12 MB component (SpiderMonkey inside): compiled before the broker listens when
    // the shared cache does not have it yet.
    let b = broker(dir.path(), LINK_GUARD_JS)
        .start_timeout(Duration::from_secs(120))
        .start()
        .await;
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut trusted, _) = b
        .connect(&token_with("tina", json!({"trusted": true})))
        .await;
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:lobby").await;

    // A link from a user without the claim: refused, with the plugin's reason.
    let e = alice
        .expect_error(
            json!({"type": "publish", "channel": "chat:lobby", "data": {"text": "see https://example.com"}}),
            "rejected",
        )
        .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("links are allowed only for trusted users"),
        "{e}"
    );
    // Plain text from anyone, and a link from a trusted user: through, tagged.
    alice.publish("chat:lobby", json!({"text": "hello"})).await;
    trusted
        .publish("chat:lobby", json!({"text": "docs: https://example.com"}))
        .await;
    let got = bob.messages("chat:lobby", 2).await;
    assert_eq!(got[0]["data"]["text"], "hello", "{got:?}");
    assert_eq!(got[1]["data"]["text"], "docs: https://example.com");
    assert!(
        got.iter()
            .all(|m| m["meta"]["checked_by"] == "link-guard-js"),
        "{got:?}"
    );
    let view = admin(&b, "GET", "/admin/plugins").await;
    let p = &view["plugins"][0];
    assert_eq!(p["name"], "link-guard", "{view}");
    assert_eq!(p["hooks"], json!(["publish"]), "{view}");
    assert_eq!(p["calls"], 3, "{view}");
}
