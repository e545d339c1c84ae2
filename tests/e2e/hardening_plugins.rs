//! Issue 10 ("Hardening"), the plugin host: the compile cache is trusted only when its
//! tag verifies, and a slow plugin cannot stall connections that do not use it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::request;
use crate::plugins::{ADMIN_KEY, broker, examples, plugin_dir, test_plugins, token_with};

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

/// The 99th percentile of `samples` (sorted in place), in milliseconds.
fn p99_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    let i = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    samples[i].as_secs_f64() * 1e3
}

/// Publish → `published` round trips of `n` publications, one at a time.
async fn round_trips(c: &mut crate::harness::Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let r = c
            .request(json!({"type": "publish", "channel": "chat:quiet", "data": {"i": i}}))
            .await;
        out.push(started.elapsed());
        assert_eq!(r["type"], "published", "{r}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_stall_other_namespaces() {
    let dir = plugin_dir(&[(&test_plugins(), "misbehave")]);
    let b = broker(
        dir.path(),
        r#"
[plugins.modules.misbehave]
on_error = "reject"
[namespaces.spin]
allow_publish = true
plugins = ["misbehave"]
"#,
    )
    .start()
    .await;
    let channels = json!({"channels": ["chat:*", "spin:*"]});
    let (mut quiet, _) = b.connect(&token_with("quiet", channels.clone())).await;
    let (mut spinner, _) = b.connect(&token_with("spinner", channels)).await;

    // Baseline: nobody spins.
    round_trips(&mut quiet, 50).await;
    let mut baseline = round_trips(&mut quiet, 500).await;
    let baseline_p99 = p99_ms(&mut baseline);

    // One client has every publication of `spin` run the plugin to its deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU32::new(0));
    let (first_tx, first_refusal) = tokio::sync::oneshot::channel();
    let spinning = tokio::spawn({
        let stop = stop.clone();
        let refusals = refusals.clone();
        async move {
            let mut first_tx = Some(first_tx);
            let (mut refused, started) = (0u32, Instant::now());
            while !stop.load(Ordering::Relaxed)
                && refused < 20_000
                && started.elapsed() < Duration::from_secs(120)
            {
                let e = spinner
                    .expect_error(
                        json!({"type": "publish", "channel": "spin:x", "data": {"do": "loop"}}),
                        "rejected",
                    )
                    .await;
                assert!(e["message"].as_str().unwrap().contains("deadline"), "{e}");
                refused += 1;
                refusals.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            refused
        }
    });
    tokio::time::timeout(Duration::from_secs(30), first_refusal)
        .await
        .expect("the spinning client is refused within 30 s")
        .unwrap();

    let before = refusals.load(Ordering::Relaxed);
    let window = Instant::now();
    // At least 500 publications, and on until the plugin has looped 10 times meanwhile
    // (bounded in count and time).
    let mut loaded = round_trips(&mut quiet, 500).await;
    while refusals.load(Ordering::Relaxed) - before < 10
        && loaded.len() < 100_000
        && window.elapsed() < Duration::from_secs(60)
    {
        loaded.extend(round_trips(&mut quiet, 100).await);
    }
    let window = window.elapsed();
    let during = refusals.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let refused = tokio::time::timeout(Duration::from_secs(30), spinning)
        .await
        .expect("the spinning client stops")
        .unwrap();
    let loaded_p99 = p99_ms(&mut loaded);
    eprintln!(
        "publish p99: {baseline_p99:.2} ms alone, {loaded_p99:.2} ms beside a looping plugin \
         ({during} refusals during its {} publishes in {:.0} ms; {refused} in all)",
        loaded.len(),
        window.as_secs_f64() * 1e3
    );
    assert!(
        during >= 10,
        "the plugin looped throughout: {during} refusals"
    );
    assert!(
        loaded_p99 <= baseline_p99 + 20.0,
        "p99 {loaded_p99:.2} ms beside the looping plugin vs {baseline_p99:.2} ms alone"
    );
    // Its first loop moved it off the connections' threads for good.
    let r = request(b.admin_addr, "GET", "/admin/plugins", Some(ADMIN_KEY), None).await;
    let view = r.json();
    assert_eq!(view["plugins"][0]["inline"], false, "{view}");
}
