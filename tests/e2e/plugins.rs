//! Plugins end to end: the real broker loads real plugins built from source
//! (plugins/build, tests/plugins/build) and real clients see their decisions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestBroker, deadline, now_s, run_hookwire, sign_claims};
use crate::http::request;

mod capture;
mod contract;
mod failures;
mod languages;
mod loading;
mod reload;
mod rollout;
mod scaffold;

pub(crate) const ADMIN_KEY: &str = "admin-key-for-plugin-tests";

pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

pub(crate) fn test_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/dist")
}

fn wasm(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (plugins/build and tests/plugins/build; tests/run does)",
        path.display()
    );
    path
}

/// A plugin directory of its own (reload tests change files in it), with a shared
/// compile cache so each broker does not compile the same module again.
pub(crate) fn plugin_dir(files: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, name) in files {
        std::fs::copy(wasm(from, name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

pub(crate) fn cache_dir() -> String {
    format!("{}/plugin-cache", env!("CARGO_TARGET_TMPDIR"))
}

async fn start(dir: &Path, plugins_toml: &str) -> TestBroker {
    broker(dir, plugins_toml).start().await
}

/// What `start` starts, for a test that needs to change more (e.g. the start timeout).
pub(crate) fn broker(dir: &Path, plugins_toml: &str) -> crate::harness::Builder {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/hookwire.toml"
    ))
    .unwrap();
    // The shipped config minus its plugin sections, plus the test's.
    let mut config: toml::Table = toml::from_str(&base).unwrap();
    config.remove("plugins");
    let namespaces = config["namespaces"].as_table_mut().unwrap();
    for (_, ns) in namespaces.iter_mut() {
        ns.as_table_mut().unwrap().remove("plugins");
    }
    let extra: toml::Table = toml::from_str(plugins_toml).unwrap();
    for (k, v) in extra {
        match (config.get_mut(&k), v) {
            (Some(toml::Value::Table(have)), toml::Value::Table(add)) => {
                for (k2, v2) in add {
                    match (have.get_mut(&k2), v2) {
                        (Some(toml::Value::Table(h2)), toml::Value::Table(a2)) => h2.extend(a2),
                        (_, v2) => {
                            have.insert(k2, v2);
                        }
                    }
                }
            }
            (_, v) => {
                config.insert(k, v);
            }
        }
    }
    TestBroker::builder()
        .config(&toml::to_string(&config).unwrap())
        .unset_env("HOOKWIRE_PLUGINS_ENABLED")
        .env("HOOKWIRE_PLUGINS_DIR", dir.to_str().unwrap())
        .env("HOOKWIRE_PLUGINS_CACHE_DIR", &cache_dir())
        .env("HOOKWIRE_ADMIN_KEY", ADMIN_KEY)
}

pub(crate) fn token_with(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now_s() + 3600, "channels": ["chat:*", "user:*"]});
    if let (Some(c), Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    sign_claims(&claims)
}

async fn admin(b: &TestBroker, method: &str, path: &str) -> Value {
    let r = request(b.admin_addr, method, path, Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Whether `/metrics` text has a sample whose name and first labels are `prefix`, with
/// this value.
pub(crate) fn has_metric(metrics: &str, prefix: &str, value: u64) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with(prefix) && l.ends_with(&format!("}} {value}")))
}

/// The `misbehave` test plugin on `chat`, one warm instance.
fn misbehave_toml(extra: &str) -> String {
    format!(
        r#"
[plugins]
instances = 1
[plugins.modules.misbehave]
{extra}
[plugins.modules.misbehave.config]
tag = "v1"
[namespaces.chat]
plugins = ["misbehave"]
"#
    )
}

async fn calls_meta(c: &mut crate::harness::Client, sub: &mut crate::harness::Client) -> u64 {
    c.publish("chat:room", json!({"do": "nothing"})).await;
    let m = sub.messages("chat:room", 1).await.remove(0);
    m["meta"]["calls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no meta.calls: {m}"))
}

const EXAMPLES: &str = r#"
[plugins]
connection = ["channel-acl"]
[plugins.modules.channel-acl.config]
deny_users = ["mallory"]
rules = [{ channels = "chat:admin*", claim = "role", equals = "admin" }]
[plugins.modules.schema-guard.config]
fields.text = { type = "string", required = true, max_len = 200 }
[plugins.modules.redact.config]
words = ["darn"]
[plugins.modules.enrich.config]
claims = ["name"]
[plugins.modules.mentions]
[namespaces.chat]
plugins = ["channel-acl", "schema-guard", "redact", "enrich", "mentions"]
"#;

#[tokio::test]
async fn the_example_plugins_refuse_redact_enrich_notify_and_guard() {
    let dir = plugin_dir(&[
        (&examples(), "channel-acl"),
        (&examples(), "schema-guard"),
        (&examples(), "redact"),
        (&examples(), "enrich"),
        (&examples(), "mentions"),
    ]);
    let audit = dir.path().join("audit.jsonl");
    let b = start(
        dir.path(),
        &EXAMPLES.replace(
            "connection = [\"channel-acl\"]",
            &format!(
                "connection = [\"channel-acl\"]\naudit_file = {:?}",
                audit.to_str().unwrap()
            ),
        ),
    )
    .await;

    let (mut alice, _) = b
        .connect(&token_with("alice", json!({"name": "Alice"})))
        .await;
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:lobby").await;
    bob.subscribe("user:bob").await;

    // schema-guard: the reason names the field.
    let e = alice
        .expect_error(
            json!({"type": "publish", "channel": "chat:lobby", "data": {"text": 5}}),
            "rejected",
        )
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("schema-guard") && message.contains("text"),
        "{e}"
    );

    // redact + enrich + mentions, in one publication.
    alice
        .publish(
            "chat:lobby",
            json!({"text": "darn, @bob: mail me at alice@example.com"}),
        )
        .await;
    let got = bob.messages("chat:lobby", 1).await.remove(0);
    let text = got["data"]["text"].as_str().unwrap();
    assert!(
        !text.contains("darn") && !text.contains("alice@example.com"),
        "{got}"
    );
    assert!(got["meta"]["redacted"].as_u64().unwrap() >= 2, "{got}");
    assert_eq!(got["meta"]["name"], "Alice", "{got}");
    let received_at = got["meta"]["received_at"].as_u64().unwrap();
    assert!(received_at / 1000 >= now_s() - 60, "{got}");
    let mention = bob.messages("user:bob", 1).await.remove(0);
    assert_eq!(mention["data"]["kind"], "mention", "{mention}");
    assert_eq!(mention["data"]["from"], "alice", "{mention}");

    // channel-acl: the subscribe rule and the connect deny list.
    let e = bob
        .expect_error(
            json!({"type": "subscribe", "channel": "chat:admin-room"}),
            "rejected",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("role"), "{e}");
    let (mut admin_client, _) = b
        .connect(&token_with("carol", json!({"role": "admin"})))
        .await;
    admin_client.subscribe("chat:admin-room").await;
    let mut mallory = crate::harness::Client::open(&b.ws_url()).await;
    let reply = mallory
        .request(json!({"type": "connect", "token": token_with("mallory", json!({}))}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "rejected", "{reply}");
    let closed = mallory.closed().await;
    assert_eq!(closed.code, Some(4003), "{closed:?}");

    // /admin/plugins shows every plugin with its counters.
    let view = admin(&b, "GET", "/admin/plugins").await;
    let plugins = view["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 5, "{view}");
    let guard = plugins
        .iter()
        .find(|p| p["name"] == "schema-guard")
        .unwrap();
    assert_eq!(guard["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(guard["hooks"], json!(["publish"]));
    assert_eq!(guard["namespaces"], json!(["chat"]));
    assert!(guard["calls"].as_u64().unwrap() >= 2, "{guard}");
    assert!(guard["p99_us"].as_f64().unwrap() > 0.0, "{guard}");

    // The audit trail has the refusal, the data change and the emitted publication.
    let deadline = deadline();
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has = |plugin: &str, decision: &str| {
            records
                .iter()
                .any(|r| r["plugin"] == plugin && r["decision"] == decision)
        };
        if has("schema-guard", "refused")
            && has("redact", "modified")
            && has("mentions", "emitted")
            && has("channel-acl", "refused")
        {
            let r = records
                .iter()
                .find(|r| r["plugin"] == "schema-guard")
                .unwrap();
            for field in [
                "time", "version", "sha256", "hook", "channel", "user", "client", "reason",
            ] {
                assert!(!r[field].is_null(), "audit record lacks {field}: {r}");
            }
            assert_eq!(r["user"], "alice");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit records missing: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plugin_inspect_and_test_report_and_check_decisions() {
    let guard = wasm(&examples(), "schema-guard");
    let (code, out) = run_hookwire(&["plugin", "inspect", guard.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "sha256:",
        "world:   hookwire:plugin@0.2.0",
        "plugin:  schema-guard",
        "hooks:   publish",
        "hookwire:plugin/host@0.2.0",
        "provided",
        "hookwire:plugin/on-publish@0.2.0#on-publish",
        "load:    ok",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    let net = wasm(&test_plugins(), "net-import");
    let (code, out) = run_hookwire(&["plugin", "inspect", net.to_str().unwrap(), "--json"], &[]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["refused"].as_str().unwrap().contains("wasi:sockets"),
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            json!({"hook": "publish", "channel": "chat:a", "user": "alice", "data": {"text": "hi"}, "expect": "allow"}),
            json!({"hook": "publish", "channel": "chat:a", "user": "alice", "data": {"text": 1},
                   "expect": {"decision": "refuse", "reason_contains": "text"}}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n"),
    )
    .unwrap();
    let config = r#"{"fields": {"text": {"type": "string", "required": true}}}"#;
    let args = [
        "plugin",
        "test",
        guard.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--config",
        config,
    ];
    let (code, out) = run_hookwire(&args, &[]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[1]["decision"], "refuse");
    assert_eq!(lines[1]["expect"], "met");
    // A wrong expectation fails the run.
    std::fs::write(
        &events,
        json!({"hook": "publish", "channel": "chat:a", "data": {"text": 1}, "expect": "allow"})
            .to_string(),
    )
    .unwrap();
    let (code, out) = run_hookwire(&args, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT MET"), "{out}");
}

/// The Python example (plugins/py-moderator) is built by its own script, and is named
/// `moderator` (what its `info` says) with a file of another name, as its README shows.
#[tokio::test]
async fn one_plugin_runs_twice_under_names_of_its_own() {
    // schema-guard.wasm, loaded as two modules with different rules, both on `chat`.
    let dir = plugin_dir(&[(&examples(), "schema-guard")]);
    let b = start(
        dir.path(),
        r#"
[plugins.modules.short]
file = "schema-guard.wasm"
config.fields.text = { type = "string", max_len = 5 }
[plugins.modules.typed]
file = "schema-guard.wasm"
config.fields.kind = { required = true, enum = ["msg"] }
[namespaces.chat]
plugins = ["short", "typed"]
"#,
    )
    .await;
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    for (data, by) in [
        (json!({"text": "far too long", "kind": "msg"}), "short"),
        (json!({"text": "hi"}), "typed"),
    ] {
        let e = alice
            .expect_error(
                json!({"type": "publish", "channel": "chat:lobby", "data": data}),
                "rejected",
            )
            .await;
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("plugin {by} refused")),
            "{e}"
        );
    }
    alice
        .publish("chat:lobby", json!({"text": "hi", "kind": "msg"}))
        .await;
    let view = admin(&b, "GET", "/admin/plugins").await;
    let names: Vec<&str> = view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["short", "typed"], "{view}");
    assert_eq!(
        view["plugins"][0]["sha256"], view["plugins"][1]["sha256"],
        "{view}"
    );
}

/// A repeated idempotency key is answered with the first offset before the chain runs:
/// the plugins see the publication once, and subscribers get it once.
#[tokio::test]
async fn a_repeated_key_does_not_run_the_plugins_again() {
    let dir = plugin_dir(&[(&examples(), "schema-guard"), (&examples(), "enrich")]);
    let b = start(
        dir.path(),
        r#"
[plugins.modules.schema-guard.config]
fields.text = { type = "string", required = true }
[plugins.modules.enrich.config]
claims = ["name"]
[namespaces.chat]
plugins = ["schema-guard", "enrich"]
"#,
    )
    .await;
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:once").await;
    let frame =
        json!({"type": "publish", "channel": "chat:once", "data": {"text": "hi"}, "key": "k-1"});
    let first = alice.request(frame.clone()).await;
    let again = alice.request(frame).await;
    assert_eq!(first["type"], "published", "{first}");
    assert_eq!(again["offset"], first["offset"], "{again}");
    bob.messages("chat:once", 1).await;
    bob.ping().await;
    assert!(!bob.pushes.iter().any(|m| m["type"] == "message"));
    let (_, metrics) = b.admin_get("/metrics").await;
    for plugin in ["schema-guard", "enrich"] {
        let line = format!(
            "hookwire_plugin_calls_total{{hook=\"publish\",plugin=\"{plugin}\",role=\"live\",version="
        );
        assert!(
            has_metric(&metrics, &line, 1),
            "{plugin} ran again:\n{metrics}"
        );
    }
}
