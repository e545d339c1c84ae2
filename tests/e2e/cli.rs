//! The `hookwire` command line: `token`, `check-config`, `serve` start-up checks, `--help`.

use base64::Engine;
use serde_json::json;

use crate::harness::*;

const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hookwire.toml");

/// `hookwire token --config <shipped> ARGS...` with `secret` as HOOKWIRE_JWT_SECRET
/// (`None`: unset).
fn token_cli(args: &[&str], secret: Option<&str>) -> (i32, String) {
    let mut all = vec!["token", "--config", SHIPPED_CONFIG];
    all.extend_from_slice(args);
    let env: Vec<(&str, &str)> = secret
        .map(|s| ("HOOKWIRE_JWT_SECRET", s))
        .into_iter()
        .collect();
    run_hookwire(&all, &env)
}

/// The claims of a JWT, read without checking its signature.
fn claims_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn token_mints_a_jwt_the_broker_accepts() {
    let (code, out) = token_cli(
        &["--sub", "alice", "--channels", "chat:*", "--ttl", "1h"],
        Some(SECRET),
    );
    assert_eq!(code, 0, "{out}");
    let jwt = out.trim();
    assert_eq!(jwt.split('.').count(), 3, "{out}");
    assert!(!jwt.contains(char::is_whitespace), "{out}");

    let broker = TestBroker::start().await;
    let (mut c, r) = broker.connect(jwt).await;
    assert_eq!(r["type"], "connected", "{r}");
    assert_eq!(r["user"], "alice");
    let expires = r["expires"].as_u64().unwrap();
    let hour_from_now = now_s() + 3600;
    assert!(
        expires.abs_diff(hour_from_now) <= 5,
        "expires {expires}, expected about {hour_from_now}"
    );
    c.subscribe("chat:lobby").await;
    // The claims are exactly the ones asked for.
    let claims = claims_of(jwt);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["channels"], json!(["chat:*"]));
    assert!(claims.get("publish").is_none(), "{claims}");
    let mut other = broker.client("bob", &["*"]).await;
    other.ping().await;
}

#[tokio::test]
async fn token_with_publish_and_info_and_a_bad_secret() {
    let (code, out) = token_cli(
        &[
            "--sub",
            "bob",
            "--channels",
            "chat:*,news:*",
            "--publish",
            "chat:own",
            "--info",
            r#"{"name":"Bob"}"#,
            "--claim",
            "name=Bob B.",
            "--claim",
            r#"team={"id":7}"#,
            "--ttl",
            "15m",
        ],
        Some(SECRET),
    );
    assert_eq!(code, 0, "{out}");
    // --claim adds claims, JSON when the value parses, else a string.
    let claims = claims_of(out.trim());
    assert_eq!(claims["name"], "Bob B.", "{claims}");
    assert_eq!(claims["team"], json!({"id": 7}), "{claims}");
    assert_eq!(claims["info"], json!({"name": "Bob"}), "{claims}");
    let broker = TestBroker::start().await;
    let mut c = broker.client_with(out.trim()).await;
    c.subscribe("chat:lobby").await;
    c.expect_error(
        json!({"type": "publish", "channel": "chat:lobby", "data": 1}),
        "forbidden",
    )
    .await;
    c.publish("chat:own", json!(1)).await;
    let p = c
        .request(json!({"type": "presence", "channel": "chat:lobby"}))
        .await;
    assert_eq!(p["clients"][0]["info"], json!({"name": "Bob"}), "{p}");

    // A secret that is too short is refused, and so is a token without a secret.
    let (code, out) = token_cli(&["--sub", "bob"], Some("short"));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("HOOKWIRE_JWT_SECRET"), "{out}");
    let (code, out) = token_cli(&["--sub", "bob"], None);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("HOOKWIRE_JWT_SECRET"), "{out}");
    let (code, out) = token_cli(&["--sub", "bob", "--info", "[1]"], Some(SECRET));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("--info"), "{out}");
    // A claim with an option of its own is refused (a usage error), not overridden.
    let (code, out) = token_cli(&["--sub", "bob", "--claim", "sub=eve"], Some(SECRET));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--sub"), "{out}");
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let (code, out) = run_hookwire(
        &["check-config", "--config", SHIPPED_CONFIG],
        &[("HOOKWIRE_JWT_SECRET", SECRET)],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("config OK"), "{out}");
    assert!(out.contains("namespace chat"), "{out}");
}

#[test]
fn check_config_on_a_bad_config_exits_64_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[limits]\nmax_frame_bytes = 3\nping_interval_ms = 7\n\n[namespaces.chat]\nhistory_size = 10\nhistory_ttl_secs = 0\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let (code, out) = run_hookwire(
        &["check-config", "--config", path],
        &[("HOOKWIRE_JWT_SECRET", SECRET)],
    );
    assert_eq!(code, 64, "{out}");
    // Every problem at once, each with its key, its value and what is allowed.
    assert!(out.contains("limits.max_frame_bytes = 3"), "{out}");
    assert!(out.contains("256"), "{out}");
    assert!(out.contains("limits.ping_interval_ms = 7"), "{out}");
    assert!(
        out.contains("namespaces.chat.history_ttl_secs = 0"),
        "{out}"
    );

    // A bad environment override names the variable and the value.
    let (code, out) = run_hookwire(
        &["check-config", "--config", SHIPPED_CONFIG],
        &[
            ("HOOKWIRE_JWT_SECRET", SECRET),
            ("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "lots"),
        ],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("HOOKWIRE_LIMITS_MAX_FRAME_BYTES"), "{out}");
    assert!(out.contains("lots"), "{out}");

    // `[cluster]` is checked like every section (HOOKWIRE_NATS_URL turns it on).
    let (code, out) = run_hookwire(
        &["check-config", "--config", SHIPPED_CONFIG],
        &[
            ("HOOKWIRE_JWT_SECRET", SECRET),
            ("HOOKWIRE_NATS_URL", "http://127.0.0.1:4222"),
            ("HOOKWIRE_CLUSTER_REPLICAS", "9"),
        ],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("cluster.nats_url"), "{out}");
    assert!(out.contains("cluster.replicas"), "{out}");

    // An unknown key is named too.
    std::fs::write(
        dir.path().join("typo.toml"),
        "[limits]\nmax_frame_byte = 5\n",
    )
    .unwrap();
    let (code, out) = run_hookwire(
        &[
            "check-config",
            "--config",
            dir.path().join("typo.toml").to_str().unwrap(),
        ],
        &[("HOOKWIRE_JWT_SECRET", SECRET)],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("max_frame_byte"), "{out}");

    // A config file that does not exist.
    let (code, out) = run_hookwire(
        &["check-config", "--config", "/nonexistent/hookwire.toml"],
        &[("HOOKWIRE_JWT_SECRET", SECRET)],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("/nonexistent/hookwire.toml"), "{out}");
}

#[test]
fn serve_without_a_secret_and_without_dev_exits_64() {
    let (code, out) = run_hookwire(&["serve", "--config", SHIPPED_CONFIG], &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("HOOKWIRE_JWT_SECRET"), "{out}");
    assert!(out.contains("--dev"), "{out}");
    let (code, out) = run_hookwire(&["check-config", "--config", SHIPPED_CONFIG], &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("HOOKWIRE_JWT_SECRET"), "{out}");
}

#[tokio::test]
async fn serve_with_dev_starts_with_a_loud_warning_and_the_dev_secret() {
    let broker = TestBroker::builder()
        .without_secret()
        .arg("--dev")
        .start()
        .await;
    let line = broker.wait_log("DEVELOPMENT MODE").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(line.contains("HOOKWIRE_JWT_SECRET"), "{line}");
    let dev_token = spec("alice", &["chat:*"]).sign_hs256(hookwire::auth::DEV_SECRET.as_bytes());
    let mut c = broker.client_with(&dev_token).await;
    c.subscribe("chat:lobby").await;
}

#[test]
fn help_works_for_every_command() {
    for (command, flags) in [
        ("serve", &["--config", "--dev", "--log-format"][..]),
        (
            "token",
            &["--sub", "--channels", "--publish", "--ttl", "--info"][..],
        ),
        ("check-config", &["--config", "--dev"][..]),
    ] {
        let (code, out) = run_hookwire(&[command, "--help"], &[]);
        assert_eq!(code, 0, "{command} --help: {out}");
        assert!(out.contains("Usage"), "{command} --help: {out}");
        for flag in flags {
            assert!(out.contains(flag), "{command} --help lacks {flag}: {out}");
        }
        let (code, out) = run_hookwire(&["help", command], &[]);
        assert_eq!(code, 0, "help {command}: {out}");
    }
    let (code, out) = run_hookwire(&["--help"], &[]);
    assert_eq!(code, 0, "{out}");
    for command in ["serve", "token", "check-config"] {
        assert!(out.contains(command), "{out}");
    }
    let (code, _) = run_hookwire(&["--version"], &[]);
    assert_eq!(code, 0);
    let (code, out) = run_hookwire(&["no-such-command"], &[]);
    assert_ne!(code, 0, "{out}");
}

#[tokio::test]
async fn sigterm_disconnects_clients_with_1012_and_exits_0() {
    let mut broker = TestBroker::start().await;
    let mut c = broker.client("alice", &["chat:*"]).await;
    c.subscribe("chat:lobby").await;
    broker.signal("TERM");
    let closed = c.closed().await;
    closed.assert_code(1012);
    let d = closed.disconnect.unwrap();
    assert_eq!(d["reconnect"], true, "{d}");
    assert!(d["delay_ms"].as_u64().is_some(), "{d}");
    assert_eq!(broker.wait_exit(WAIT).await, Some(0));
    broker.wait_log(r#""message":"Stopped""#).await;
}

/// An override changes exactly the key it names: run from a directory without `config/`
/// (the embedded defaults), an empty `HOOKWIRE_NAMESPACES_CHAT_PLUGINS` leaves every
/// namespace as it was.
#[test]
fn an_override_outside_the_repository_changes_only_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_hookwire_in(
        dir.path(),
        &["check-config"],
        &[
            ("HOOKWIRE_JWT_SECRET", SECRET),
            ("HOOKWIRE_NAMESPACES_CHAT_PLUGINS", ""),
            ("HOOKWIRE_NAMESPACES_NEWS_HISTORY_SIZE", "7"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("embedded defaults"), "{out}");
    assert!(
        out.contains("namespace chat     history 100/300s presence=true join_leave=true"),
        "{out}"
    );
    assert!(out.contains("namespace user"), "{out}");
    assert!(out.contains("namespace news     history 7/3600s"), "{out}");
}
