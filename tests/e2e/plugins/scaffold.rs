//! `hookwire plugin new`: each language's project builds with its build script and
//! passes `plugin test` on its own events, as written; the Rust one's unit tests pass.

use std::process::Command;

use super::*;
use crate::harness::{run_hookwire_in, run_hookwire_within};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Runs a command in `dir`; panics with its output when it fails.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, String)]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tool the example plugins' builds installed (tests/run builds them first).
fn tool(path: &str) -> String {
    let tool = Path::new(ROOT).join(path);
    assert!(
        tool.exists(),
        "{} is missing: build the example plugins first (tests/run does)",
        tool.display()
    );
    tool.display().to_string()
}

#[test]
fn plugin_new_writes_projects_that_build_and_pass_their_own_events() {
    let work = tempfile::tempdir().unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(ROOT).join("target"));
    // The toolchains the examples installed, so the test needs no registry.
    let env = [
        (
            "CARGO_TARGET_DIR",
            target.join("scaffold").display().to_string(),
        ),
        (
            "COMPONENTIZE_PY",
            tool("plugins/py-moderator/.venv/bin/componentize-py"),
        ),
        (
            "COMPONENTIZE_JS",
            tool("plugins/js-link-guard/node_modules/.bin/componentize-js"),
        ),
    ];
    for lang in ["rust", "python", "js"] {
        let name = format!("{lang}-guard");
        let (code, out) =
            run_hookwire_in(work.path(), &["plugin", "new", &name, "--lang", lang], &[]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("next: cd"), "{out}");
        let project = work.path().join(&name);
        run(&project, "./build", &[], &env);
        let wasm = format!("{name}.wasm");
        // Compiling CPython or SpiderMonkey in the debug build takes a while.
        let (code, out) = run_hookwire_within(
            &project,
            &[
                "plugin",
                "test",
                &wasm,
                "--events",
                "events.jsonl",
                "--config",
                r#"{"max_len": 20}"#,
            ],
            &[],
            Duration::from_secs(180),
        );
        assert_eq!(code, 0, "{lang}: {out}");
        assert_eq!(
            out.matches("\"expect\":\"met\"").count(),
            3,
            "{lang}: {out}"
        );
        if lang == "rust" {
            run(&project, "cargo", &["test", "--quiet"], &env);
        }
        // Not over an existing project.
        let (code, out) =
            run_hookwire_in(work.path(), &["plugin", "new", &name, "--lang", lang], &[]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("already exists"), "{out}");
    }
    let (code, out) = run_hookwire_in(work.path(), &["plugin", "new", "Bad_Name"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a plugin name"), "{out}");
}
