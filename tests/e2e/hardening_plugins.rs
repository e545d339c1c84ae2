//! Issue 10 ("Hardening"), the plugin host: the compile cache is trusted only when its
//! tag verifies, and a slow plugin cannot stall connections that do not use it.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::plugins::{broker, examples, plugin_dir, test_plugins, token_with};

/// The cache entry of the module at `wasm` in `cache` (`<sha256>-<engine hash>.cwasm`).
fn cache_entry(cache: &Path, wasm: &Path) -> std::path::PathBuf {
    let sha: String = Sha256::digest(std::fs::read(wasm).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let found: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{sha}-")) && name.ends_with(".cwasm")
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one entry for {}: {found:?}",
        wasm.display()
    );
    found.into_iter().next().unwrap()
}

const REDACT: &str = r#"
[plugins.modules.redact.config]
words = ["darn"]
[namespaces.chat]
plugins = ["redact"]
"#;

#[tokio::test]
async fn a_planted_cache_artifact_is_never_run_and_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let cache_env = cache.to_str().unwrap();
    let dir = plugin_dir(&[(&examples(), "redact"), (&test_plugins(), "misbehave")]);

    // A broker with both plugins fills the cache with a valid entry for each.
    let both = format!("{REDACT}\n[plugins.modules.misbehave]\n");
    let b = broker(dir.path(), &both)
        .env("HOOKWIRE_PLUGINS_CACHE_DIR", cache_env)
        .start()
        .await;
    drop(b);
    assert!(
        cache.with_file_name("cache.key").is_file(),
        "the key lives beside the cache, not in it"
    );
    let redact = cache_entry(&cache, &dir.path().join("redact.wasm"));
    let misbehave = cache_entry(&cache, &dir.path().join("misbehave.wasm"));
    let genuine = std::fs::read(&redact).unwrap();

    // Someone who can write into the cache plants plugin X's valid artifact (tag and
    // all) under the name of plugin Y, which the next broker loads.
    std::fs::copy(&misbehave, &redact).unwrap();
    let planted = std::fs::read(&redact).unwrap();
    assert_ne!(planted, genuine);

    let b = broker(dir.path(), REDACT)
        .env("HOOKWIRE_PLUGINS_CACHE_DIR", cache_env)
        .start()
        .await;
    // The loaded plugin behaves as redact: the planted code (misbehave, which would
    // answer with `meta.calls` and leave the word alone) never ran.
    let (mut alice, _) = b.connect(&token_with("alice", json!({}))).await;
    let (mut bob, _) = b.connect(&token_with("bob", json!({}))).await;
    bob.subscribe("chat:lobby").await;
    alice
        .publish("chat:lobby", json!({"text": "darn it", "do": "trap"}))
        .await;
    let got = bob.messages("chat:lobby", 1).await.remove(0);
    assert_eq!(got["data"]["text"], "**** it", "{got}");
    assert_eq!(got["meta"]["redacted"], 1, "{got}");
    assert!(got["meta"].get("calls").is_none(), "{got}");

    // Rejected, counted, logged, and replaced by a fresh entry that verifies.
    b.wait_log("Rejected a plugin cache entry").await;
    let (_, metrics) = b.admin_get("/metrics").await;
    assert!(
        metrics.contains("hookwire_plugin_cache_rejected_total{reason=\"bad_tag\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("cache"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let now = std::fs::read(&redact).unwrap();
    assert_ne!(now, planted, "the planted entry was replaced");
    drop(b);

    // The replacement verifies: the next start uses it without a rejection.
    let b = broker(dir.path(), REDACT)
        .env("HOOKWIRE_PLUGINS_CACHE_DIR", cache_env)
        .start()
        .await;
    let (_, metrics) = b.admin_get("/metrics").await;
    assert!(
        !metrics.contains("hookwire_plugin_cache_rejected_total{"),
        "no rejection on a clean cache"
    );
    assert_eq!(std::fs::read(&redact).unwrap(), now);
}
