//! Rolling out a new version: a canary's stable share, promotion; a shadow compared and
//! never applied, rollback.

use super::*;

const CHANNELS: usize = 40;

/// `misbehave` live (tag v1) with a canary: the same module as `misbehave-v2.wasm`, tag
/// v2, taking half of the channels.
const CANARY: &str = r#"
[plugins]
instances = 1
[plugins.modules.misbehave]
canary = { file = "misbehave-v2.wasm", percent = 50, by = "channel", config = { tag = "v2" } }
[plugins.modules.misbehave.config]
tag = "v1"
[namespaces.chat]
plugins = ["misbehave"]
"#;

async fn post(b: &crate::harness::TestBroker, path: &str) -> crate::http::Response {
    request(b.admin_addr, "POST", path, Some(ADMIN_KEY), None).await
}

/// Publishes once to each channel and answers the tag each delivery carries.
async fn tags(
    c: &mut crate::harness::Client,
    sub: &mut crate::harness::Client,
    channels: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for ch in channels {
        c.publish(ch, json!({"do": "nothing"})).await;
        let m = sub.messages(ch, 1).await.remove(0);
        out.push(m["meta"]["tag"].as_str().unwrap_or("none").to_string());
    }
    out
}

#[tokio::test]
async fn a_canary_takes_a_stable_share_and_promotion_makes_it_live() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    std::fs::copy(
        dir.path().join("misbehave.wasm"),
        dir.path().join("misbehave-v2.wasm"),
    )
    .unwrap();
    let b = start(dir.path(), CANARY).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("chat:room-{i}")).collect();
    for ch in &channels {
        sub.subscribe(ch).await;
    }

    // By channel: each channel stays on one version, and both versions get some.
    let first = tags(&mut c, &mut sub, &channels).await;
    let second = tags(&mut c, &mut sub, &channels).await;
    assert_eq!(first, second, "a channel moved between versions");
    let on_canary = first.iter().filter(|t| *t == "v2").count();
    assert!(
        first.iter().all(|t| t == "v1" || t == "v2"),
        "every publication ran on one of the two: {first:?}"
    );
    assert!(
        (5..=35).contains(&on_canary),
        "{on_canary} of {CHANNELS} channels on the 50 % canary"
    );
    let view = admin(&b, "GET", "/admin/plugins").await;
    let canary = &view["plugins"][0]["canary"];
    assert_eq!(canary["percent"], 50, "{view}");
    assert_eq!(canary["by"], "channel");
    // Its channels' subscribes and publications (the subscribe hook goes by channel too).
    assert_eq!(canary["calls"], 3 * on_canary as u64, "{view}");
    assert!(
        canary["file"]
            .as_str()
            .unwrap()
            .ends_with("misbehave-v2.wasm")
    );
    let (_, metrics) = b.admin_get("/metrics").await;
    assert!(
        has_metric(
            &metrics,
            "hookwire_plugin_calls_total{hook=\"publish\",plugin=\"misbehave\",role=\"canary\",version=",
            2 * on_canary as u64
        ),
        "{metrics}"
    );

    // Promote: the canary (file and config) is the live version for every channel.
    let r = post(&b, "/admin/plugins/misbehave/promote").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert!(
        answer["config"]
            .as_str()
            .unwrap()
            .contains("misbehave-v2.wasm"),
        "the answer says what to write into the config: {answer}"
    );
    let after = tags(&mut c, &mut sub, &channels).await;
    assert!(after.iter().all(|t| t == "v2"), "{after:?}");
    let view = admin(&b, "GET", "/admin/plugins").await;
    let live = &view["plugins"][0];
    assert!(live["canary"].is_null(), "{view}");
    assert!(
        live["file"]
            .as_str()
            .unwrap()
            .ends_with("misbehave-v2.wasm")
    );

    // Nothing left to promote, and an unknown plugin: refused with a sentence.
    let r = post(&b, "/admin/plugins/misbehave/promote").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("no canary or shadow"), "{}", r.body);
    let r = post(&b, "/admin/plugins/nope/rollback").await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// `misbehave` live; `schema-guard` (text required) as its shadow.
const SHADOW: &str = r#"
[plugins]
instances = 1
[plugins.modules.misbehave]
shadow = { file = "schema-guard.wasm", config = { fields.text = { type = "string", required = true } } }
[plugins.modules.misbehave.config]
tag = "v1"
[namespaces.chat]
plugins = ["misbehave"]
"#;

#[tokio::test]
async fn a_shadow_is_compared_and_never_applied_and_rollback_drops_it() {
    let dir = plugin_dir(&[
        (&test_plugins(), "misbehave"),
        (&examples(), "schema-guard"),
    ]);
    let b = start(dir.path(), SHADOW).await;
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut sub, _) = b.connect(&token_with("bob", json!({}))).await;
    sub.subscribe("chat:room").await;

    // The live version decides: both publications arrive with its tag, though the
    // shadow would have refused the second.
    c.publish("chat:room", json!({"text": "hi"})).await;
    c.publish("chat:room", json!({"do": "nothing"})).await;
    let got = sub.messages("chat:room", 2).await;
    assert!(got.iter().all(|m| m["meta"]["tag"] == "v1"), "{got:?}");
    // Both refuse this one: they agree.
    let r = c
        .request(json!({"type": "publish", "channel": "chat:room", "data": {"do": "refuse"}}))
        .await;
    assert_eq!(r["code"], "rejected", "{r}");

    let view = admin(&b, "GET", "/admin/plugins").await;
    let shadow = &view["plugins"][0]["shadow"];
    let comparison = &shadow["comparison"];
    assert_eq!(comparison["compared"], 3, "{view}");
    assert_eq!(comparison["agreed"], 1, "{view}");
    assert_eq!(comparison["differ"]["modified→allowed"], 1, "{view}");
    assert_eq!(comparison["differ"]["modified→refused"], 1, "{view}");
    let sample = comparison["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 2, "{view}");
    assert_eq!(sample[1]["channel"], "chat:room");
    assert_eq!(sample[1]["user"], "alice");
    assert!(
        sample[1]["shadow_reason"]
            .as_str()
            .unwrap()
            .contains("text"),
        "the shadow's reason is kept: {view}"
    );
    let (_, metrics) = b.admin_get("/metrics").await;
    for (outcome, n) in [
        ("agree", 1),
        ("modified→refused", 1),
        ("modified→allowed", 1),
    ] {
        let line = format!(
            "hookwire_plugin_shadow_total{{outcome=\"{outcome}\",plugin=\"misbehave\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }

    // Rollback: no shadow; the live version goes on alone.
    let r = post(&b, "/admin/plugins/misbehave/rollback").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let view = admin(&b, "GET", "/admin/plugins").await;
    assert!(view["plugins"][0]["shadow"].is_null(), "{view}");
    c.publish("chat:room", json!({"do": "nothing"})).await;
    let m = sub.messages("chat:room", 1).await.remove(0);
    assert_eq!(m["meta"]["tag"], "v1");
}

/// `channel-acl` on `refresh` and `redact` on `history`, each with a shadow (a copy of
/// the module) configured to decide otherwise.
const SHADOW_0_2: &str = r#"
[plugins]
instances = 1
connection = ["channel-acl"]
[plugins.modules.channel-acl]
hooks = ["refresh"]
shadow = { file = "channel-acl-v2.wasm", config = { deny_users = ["alice"] } }
[plugins.modules.redact]
hooks = ["history"]
shadow = { file = "redact-v2.wasm", config = { cards = false } }
[namespaces.chat]
plugins = ["redact"]
"#;

#[tokio::test]
async fn a_shadow_is_compared_on_refresh_and_history_reads_too() {
    let dir = plugin_dir(&[(&examples(), "channel-acl"), (&examples(), "redact")]);
    for name in ["channel-acl", "redact"] {
        std::fs::copy(
            dir.path().join(format!("{name}.wasm")),
            dir.path().join(format!("{name}-v2.wasm")),
        )
        .unwrap();
    }
    let b = start(dir.path(), SHADOW_0_2).await;

    // refresh: the live version allows alice's new token, the shadow would refuse it.
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let r = alice
        .request(json!({"type": "refresh", "token": token_with("alice", json!({}))}))
        .await;
    assert_eq!(
        r["type"], "refreshed",
        "the shadow's refusal was applied: {r}"
    );

    // history: the live version masks the card, the shadow (cards off) would not.
    alice
        .publish("chat:pay", json!({"text": "card 4111 1111 1111 1111"}))
        .await;
    let h = alice
        .request(json!({"type": "history", "channel": "chat:pay"}))
        .await;
    assert_eq!(
        h["publications"][0]["data"]["text"], "card [card]",
        "the shadow's answer was applied: {h}"
    );

    let view = admin(&b, "GET", "/admin/plugins").await;
    let plugin = |name: &str| {
        view["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {view}"))
            .clone()
    };
    let acl = &plugin("channel-acl")["shadow"]["comparison"];
    assert_eq!(acl["differ"]["allowed→refused"], 1, "{view}");
    assert_eq!(acl["sample"][0]["hook"], "refresh", "{view}");
    assert!(
        acl["sample"][0]["shadow_reason"]
            .as_str()
            .is_some_and(|r| r.contains("alice")),
        "{view}"
    );
    let redact = &plugin("redact")["shadow"]["comparison"];
    assert_eq!(redact["differ"]["modified→allowed"], 1, "{view}");
    assert_eq!(redact["sample"][0]["hook"], "history", "{view}");
    assert_eq!(redact["sample"][0]["channel"], "chat:pay", "{view}");
}
