//! Loading: what is refused before compiling and why, files no module loads, and
//! modules pinned by sha256.

use super::*;

#[tokio::test]
async fn a_module_that_is_not_a_plugin_is_refused_before_compiling_in_one_line() {
    // `plugin inspect`: garbage, a core module, a refused import: one line each.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not WebAssembly at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let net = wasm(&test_plugins(), "net-import");
    for (file, needle) in [
        (&garbage, "not a WebAssembly file"),
        (&core, "core WebAssembly module, not a component"),
        (&net, "wasi:sockets"),
    ] {
        let (code, out) = run_hookwire(
            &["plugin", "inspect", file.to_str().unwrap(), "--json"],
            &[],
        );
        assert_eq!(code, 1, "{out}");
        let report: Value = serde_json::from_str(&out).unwrap();
        let refused = report["refused"].as_str().unwrap();
        assert!(refused.contains(needle), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
    }

    // A running broker: a reload to garbage keeps the previous version, and the log and
    // /admin/plugins say why in one line.
    let dir = plugin_dir(&[(&examples(), "schema-guard")]);
    let b = start(
        dir.path(),
        "[plugins.modules.schema-guard.config]\nfields.text = { type = \"string\", required = true }\n",
    )
    .await;
    b.wait_log("Watching plugins").await;
    std::fs::write(dir.path().join("schema-guard.wasm"), b"garbage, not wasm").unwrap();
    let line = b.wait_log("Plugin reload failed").await;
    assert!(line.contains("not a WebAssembly file"), "{line}");
    let view = admin(&b, "GET", "/admin/plugins").await;
    let error = view["failures"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("not a WebAssembly file") && !error.contains('\n'),
        "{view}"
    );
}

#[tokio::test]
async fn a_plugin_file_no_module_loads_is_named_in_the_log() {
    // Cargo writes `schema_guard.wasm`; the module `schema-guard` looks for
    // `schema-guard.wasm`. The broker says so instead of ignoring the file.
    let dir = plugin_dir(&[(&examples(), "schema-guard")]);
    std::fs::copy(
        dir.path().join("schema-guard.wasm"),
        dir.path().join("schema_guard.wasm"),
    )
    .unwrap();
    std::fs::write(dir.path().join("stray.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let b = start(
        dir.path(),
        "[plugins.modules.schema-guard.config]\nfields.text = { type = \"string\" }\n",
    )
    .await;
    let line = b.wait_log("schema_guard.wasm: no module loads it").await;
    assert!(line.contains("Cargo writes underscores"), "{line}");
    let line = b.wait_log("stray.wasm: no module loads it").await;
    assert!(line.contains("[plugins.modules.stray]"), "{line}");
}

#[tokio::test]
async fn a_pinned_module_loads_only_with_its_sha256() {
    use sha2::Digest;
    let dir = plugin_dir(&[(&examples(), "schema-guard")]);
    let bytes = std::fs::read(dir.path().join("schema-guard.wasm")).unwrap();
    let pin: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let b = start(
        dir.path(),
        &format!(
            "[plugins.modules.schema-guard]\nsha256 = \"{pin}\"\n[plugins.modules.schema-guard.config]\nfields.text = {{ type = \"string\", required = true }}\n[namespaces.chat]\nplugins = [\"schema-guard\"]\n"
        ),
    )
    .await;
    let view = admin(&b, "GET", "/admin/plugins").await;
    assert_eq!(view["plugins"][0]["sha256"], pin.as_str(), "{view}");
    // Another build of the module (here: the same component with a byte appended in a
    // custom section) is refused, and the pinned one keeps running.
    b.wait_log("Watching plugins").await;
    let mut other = bytes.clone();
    other.extend_from_slice(&[0x00, 0x04, 0x01, b'x', 0x00, 0x00]);
    std::fs::write(dir.path().join("schema-guard.wasm"), &other).unwrap();
    let line = b.wait_log("Plugin reload failed").await;
    assert!(line.contains("the config pins"), "{line}");
    let view = admin(&b, "GET", "/admin/plugins").await;
    assert_eq!(view["plugins"][0]["sha256"], pin.as_str(), "{view}");
    let (mut c, _) = b.connect(&token_with("alice", json!({}))).await;
    c.expect_error(
        json!({"type": "publish", "channel": "chat:a", "data": {"text": 1}}),
        "rejected",
    )
    .await;
}
