//! The 0.2.0 contract: a 0.1.0 build (tests/plugins/legacy-guard, made from the frozen
//! wit/0.1.0 by tests/plugins/build) still loads beside 0.2.0 plugins,
//! refusals carry codes, the hooks 0.2.0 added (`refresh`, `history`, `unsubscribe`)
//! run, plugins share `state` and export `metrics`, and a rerouted publication goes
//! where its plugin sent it.

use super::*;
use tokio::time::Instant;

const BOTH_CONTRACTS: &str = r#"
[plugins.modules.schema-guard.config]
fields.text = { type = "string", required = true }
[plugins.modules.legacy-guard]
[namespaces.chat]
plugins = ["schema-guard"]
[namespaces.typing]
plugins = ["legacy-guard"]
"#;

#[tokio::test]
async fn a_0_1_0_build_loads_beside_0_2_0_and_refusals_carry_codes() {
    let dir = plugin_dir(&[
        (&examples(), "schema-guard"),
        (&test_plugins(), "legacy-guard"),
    ]);
    let b = start(dir.path(), BOTH_CONTRACTS).await;
    let channels = json!({"channels": ["chat:*", "typing:*"]});
    let (mut alice, _) = b.connect(&token_with("alice", channels)).await;
    let bad = |channel: &str| json!({"type": "publish", "channel": channel, "data": {"text": 5}});

    // 0.2.0: the refusal's code reaches the client beside the sentence.
    let e = alice.expect_error(bad("chat:a"), "rejected").await;
    assert_eq!(e["reason_code"], "invalid_payload", "{e}");
    // 0.1.0: the same rule, in a contract without codes: a refusal without one.
    let e = alice.expect_error(bad("typing:a"), "rejected").await;
    assert!(e.get("reason_code").is_none(), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("legacy-guard refused"),
        "{e}"
    );
    // Its 0.1.0 edit (a meta field) is applied as a 0.2.0 one.
    alice.subscribe("typing:a").await;
    alice.publish("typing:a", json!({"text": "fine"})).await;
    let got = alice.messages("typing:a", 1).await.remove(0);
    assert_eq!(got["meta"]["contract"], "0.1.0", "{got}");
    alice.publish("chat:a", json!({"text": "fine"})).await;

    let view = admin(&b, "GET", "/admin/plugins").await;
    let contract = |name: &str| {
        let plugins = view["plugins"].as_array().unwrap();
        let p = plugins.iter().find(|p| p["name"] == name).unwrap();
        (p["contract"].clone(), p["hooks"].clone())
    };
    assert_eq!(
        contract("schema-guard"),
        (json!("0.2.0"), json!(["publish"])),
        "{view}"
    );
    assert_eq!(
        contract("legacy-guard"),
        (json!("0.1.0"), json!(["publish"])),
        "{view}"
    );
}

const HOOKS_0_2: &str = r#"
[plugins]
connection = ["channel-acl"]
[plugins.modules.channel-acl]
hooks = ["refresh"]
[plugins.modules.channel-acl.config]
deny_users = ["mallory"]
[plugins.modules.redact]
hooks = ["history"]
[plugins.modules.notify-once]
[plugins.modules.notify-once.config]
window_minutes = 5
[namespaces.chat]
plugins = ["redact", "notify-once"]
"#;

#[tokio::test]
async fn refresh_history_unsubscribe_state_and_metrics_hooks_run() {
    let dir = plugin_dir(&[
        (&examples(), "channel-acl"),
        (&examples(), "redact"),
        (&examples(), "notify-once"),
    ]);
    let b = start(dir.path(), HOOKS_0_2).await;

    // refresh: channel-acl (bound to `refresh` only) refuses a blocked user's new
    // token with a code; an allowed user's refresh goes through.
    let (mut mallory, _) = b.connect(&token_with("mallory", json!({}))).await;
    let e = mallory
        .expect_error(
            json!({"type": "refresh", "token": token_with("mallory", json!({}))}),
            "rejected",
        )
        .await;
    assert_eq!(e["reason_code"], "user_blocked", "{e}");
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let r = alice
        .request(json!({"type": "refresh", "token": token_with("alice", json!({}))}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");

    // history: redact (bound to `history` only) lets the card through on publish, so
    // it is stored as sent, and masks it for readers.
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:pay").await;
    alice
        .publish("chat:pay", json!({"text": "card 4111 1111 1111 1111"}))
        .await;
    let live = bob.messages("chat:pay", 1).await.remove(0);
    assert_eq!(live["data"]["text"], "card 4111 1111 1111 1111", "{live}");
    alice.publish("chat:pay", json!({"text": "no card"})).await;
    let h = bob
        .request(json!({"type": "history", "channel": "chat:pay"}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    let texts: Vec<&str> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["card [card]", "no card"], "{h}");
    // A recovering subscribe in that namespace is not served inline: the client reads
    // history, which the chain filters.
    let s = bob
        .request(json!({"type": "subscribe", "channel": "chat:other", "recover": {"offset": 0, "epoch": h["epoch"]}}))
        .await;
    assert_eq!(s["recovered"], false, "{s}");
    assert_eq!(s["publications"], json!([]), "{s}");

    // state: notify-once notifies bob once per window per sender, over instances.
    let (mut bob_inbox, _) = b.connect(&token_with("bob", json!({}))).await;
    bob_inbox.subscribe("user:bob").await;
    for _ in 0..3 {
        alice
            .publish("chat:pay", json!({"text": "@bob look"}))
            .await;
    }
    let (mut carol, _) = b.connect(&token_with("carol", json!({}))).await;
    carol
        .publish("chat:pay", json!({"text": "@bob me too"}))
        .await;
    let notes = bob_inbox.messages("user:bob", 2).await;
    assert_eq!(notes[0]["data"]["from"], "alice", "{notes:?}");
    assert_eq!(notes[1]["data"]["from"], "carol", "{notes:?}");

    // unsubscribe: counted by notify-once's metric, by reason.
    let r = bob
        .request(json!({"type": "unsubscribe", "channel": "chat:pay"}))
        .await;
    assert_eq!(r["type"], "unsubscribed", "{r}");
    let metric =
        r#"hookwire_plugin_notify_once_unsubscribes_total{reason="client",version="0.1.0"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = b.admin_get("/metrics").await;
        if metrics.contains(metric) || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.contains(&format!("{metric} 1")), "{metrics}");
    for (outcome, n) in [("sent", 2), ("suppressed", 2)] {
        let line = format!(
            r#"hookwire_plugin_notify_once_mentions_total{{outcome="{outcome}",version="0.1.0"}} {n}"#
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

const REFRESH_META: &str = r#"
[plugins]
connection = ["misbehave"]
[plugins.modules.misbehave]
[namespaces.chat]
plugins = ["misbehave"]
"#;

/// The publisher's connection `meta`, as misbehave's `conn` action reports it.
async fn conn_meta(c: &mut crate::harness::Client) -> Value {
    c.publish("chat:m", json!({"do": "conn"})).await;
    c.messages("chat:m", 1).await.remove(0)["meta"]["conn"].clone()
}

#[tokio::test]
async fn a_refresh_hook_replaces_the_connections_meta_or_keeps_the_old_token() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), REFRESH_META).await;
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    alice.subscribe("chat:m").await;
    assert_eq!(conn_meta(&mut alice).await, json!({}));

    let r = alice
        .request(json!({"type": "refresh", "token": token_with("alice", json!({"tag": "v2"}))}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert_eq!(conn_meta(&mut alice).await, json!({"refreshed": "v2"}));

    let refused = token_with("alice", json!({"refuse_refresh": true, "tag": "v3"}));
    let e = alice
        .expect_error(json!({"type": "refresh", "token": refused}), "rejected")
        .await;
    assert_eq!(e["reason_code"], "asked", "{e}");
    // The connection kept its token and its meta.
    assert_eq!(conn_meta(&mut alice).await, json!({"refreshed": "v2"}));
}

#[tokio::test]
async fn state_outlives_an_instance_and_is_the_plugins_own() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(
        dir.path(),
        r#"
[plugins.modules.misbehave]
[plugins.modules.other]
file = "misbehave.wasm"
[namespaces.chat]
plugins = ["misbehave"]
[namespaces.typing]
plugins = ["other"]
"#,
    )
    .await;
    let channels = json!({"channels": ["chat:*", "typing:*"]});
    let (mut alice, _) = b.connect(&token_with("alice", channels)).await;
    alice.subscribe("chat:s").await;
    alice.subscribe("typing:s").await;
    let count = async |c: &mut crate::harness::Client, channel: &str| {
        c.publish(channel, json!({"do": "count"})).await;
        let m = c.messages(channel, 1).await.remove(0);
        (m["meta"]["count"].clone(), m["meta"]["calls"].clone())
    };
    assert_eq!(count(&mut alice, "chat:s").await, (json!(1), json!(1)));
    assert_eq!(count(&mut alice, "chat:s").await, (json!(2), json!(2)));
    // A trap throws the instance away; the next call runs on a fresh one (its own
    // `calls` starts again) that finds the plugin's state where the last one left it.
    alice
        .expect_error(
            json!({"type": "publish", "channel": "chat:s", "data": {"do": "trap"}}),
            "rejected",
        )
        .await;
    assert_eq!(count(&mut alice, "chat:s").await, (json!(3), json!(1)));
    // The same module loaded under another name is another plugin: its own keys.
    assert_eq!(count(&mut alice, "typing:s").await, (json!(1), json!(1)));
}

#[tokio::test]
async fn a_rerouted_publication_reaches_its_new_channel_only() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = start(dir.path(), &misbehave_toml("")).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    c.subscribe("chat:room").await;
    c.subscribe("chat:room-routed").await;

    c.publish("chat:room", json!({"do": "route", "n": 1})).await;
    c.publish("chat:room", json!({"do": "nothing", "n": 2}))
        .await;
    let routed = c.messages("chat:room-routed", 1).await.remove(0);
    assert_eq!(routed["data"]["n"], 1, "{routed}");
    // Not rerouted: the channel it was published to (resolved once, before the chain).
    let kept = c.messages("chat:room", 1).await.remove(0);
    assert_eq!(kept["data"]["n"], 2, "the rerouted one is not here: {kept}");
    assert_eq!(kept["meta"]["calls"], 2, "{kept}");
}
