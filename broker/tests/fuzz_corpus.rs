//! Replays the committed fuzz corpora (`broker/fuzz/corpus/<target>/`) through the same
//! checks the `cargo fuzz` targets run (`hookwire::fuzzing`), on the stable toolchain:
//! every input a fuzzer ever found interesting, crashes included once fixed, stays a
//! regression test.

use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("frame", hookwire::fuzzing::frame),
    ("token", hookwire::fuzzing::token),
    ("config", hookwire::fuzzing::config),
    ("plugin_answer", hookwire::fuzzing::plugin_answer),
];

fn replay(target: &str, check: Check) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    for file in files {
        let input = std::fs::read(&file).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check (broker/fuzz/README.md: reproducing a failure)",
            file.display()
        );
    }
}

#[test]
fn frame_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn token_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn config_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn plugin_answer_corpus() {
    replay(TARGETS[3].0, TARGETS[3].1);
}
