//! `hookwire plugin new NAME --lang rust|python|js`: a plugin project that builds and
//! passes `hookwire plugin test` as written. The templates live in `scaffold/`, the
//! contract (`wit/hookwire.wit`) is bundled for the languages whose toolchains read it
//! (the Rust SDK carries its own copy).

use std::path::{Path, PathBuf};

/// The contract, bundled into Python and JavaScript projects.
const WIT: &str = include_str!("../../../wit/hookwire.wit");

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "{0:?} is not a plugin name: use a-z, 0-9 and single dashes, starting with a letter (e.g. no-shouting)"
    )]
    Name(String),
    #[error("{0} already exists and is not empty: pick another name or --dir")]
    Exists(String),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// One file of a project: its path in the project, its text, whether it runs, and
/// whether its placeholders are filled (the WIT goes as it is: its braces are not
/// placeholders).
struct File {
    path: &'static str,
    text: &'static str,
    executable: bool,
    fill: bool,
}

const fn file(path: &'static str, text: &'static str) -> File {
    File {
        path,
        text,
        executable: false,
        fill: true,
    }
}

const fn script(path: &'static str, text: &'static str) -> File {
    File {
        executable: true,
        ..file(path, text)
    }
}

const fn raw(path: &'static str, text: &'static str) -> File {
    File {
        fill: false,
        ..file(path, text)
    }
}

const RUST: &[File] = &[
    file("Cargo.toml", include_str!("scaffold/rust/Cargo.toml")),
    file("src/lib.rs", include_str!("scaffold/rust/lib.rs")),
    script("build", include_str!("scaffold/rust/build")),
    file(".gitignore", "target/\n*.wasm\n"),
];

const PYTHON: &[File] = &[
    file("app.py", include_str!("scaffold/python/app.py")),
    file(
        "requirements.txt",
        include_str!("scaffold/python/requirements.txt"),
    ),
    script("build", include_str!("scaffold/python/build")),
    file("wit/world.wit", include_str!("scaffold/world.wit")),
    raw("wit/deps/hookwire/hookwire.wit", WIT),
    file(".gitignore", ".venv/\n__pycache__/\n*.wasm\n"),
];

const JS: &[File] = &[
    file("src/plugin.js", include_str!("scaffold/js/plugin.js")),
    file("package.json", include_str!("scaffold/js/package.json")),
    script("build", include_str!("scaffold/js/build")),
    file("wit/world.wit", include_str!("scaffold/world.wit")),
    raw("wit/deps/hookwire/hookwire.wit", WIT),
    file(".gitignore", "node_modules/\n*.wasm\n"),
];

const COMMON: &[File] = &[
    file("README.md", include_str!("scaffold/README.md")),
    file("events.jsonl", include_str!("scaffold/events.jsonl")),
];

/// Where the Rust SDK is: the source tree this binary was built from, when it is
/// still there.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    sdk.join("Cargo.toml")
        .exists()
        .then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// Writes the project for plugin `name` in `dir` (which must not exist, or be empty);
/// `sdk` is the Rust SDK's path as the project's `Cargo.toml` should say it (relative
/// to the project), or `None` for the published crate. Answers the files written.
pub fn new_project(
    name: &str,
    lang: Lang,
    dir: &Path,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    let sdk_dependency = match sdk {
        Some(path) => format!("hookwire-plugin = {{ path = {:?} }}", path.display().to_string()),
        None => "# Not on crates.io yet: point this at a clone's plugin-sdk with `path = \"…\"`.\nhookwire-plugin = \"0.1\"".to_string(),
    };
    let (lang_name, lang_notes, wit_place) = match lang {
        Lang::Rust => (
            "Rust",
            "\n\n`cargo test` runs the unit tests in `src/lib.rs` natively (no broker, no\nWebAssembly); the plugin SDK's README explains the API.",
            "the SDK (`hookwire-plugin`), which carries `wit/hookwire.wit`",
        ),
        Lang::Python => (
            "Python",
            "\n\nThe build installs componentize-py into `.venv` on first run (PyPI).",
            "`wit/world.wit` (its world) and `wit/deps/hookwire/hookwire.wit` (a copy of the broker's contract)",
        ),
        Lang::Js => (
            "JavaScript",
            "\n\nThe build installs ComponentizeJS into `node_modules` on first run (npm).",
            "`wit/world.wit` (its world) and `wit/deps/hookwire/hookwire.wit` (a copy of the broker's contract)",
        ),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{name_snake}}", &name.replace('-', "_"))
            .replace("{{Name}}", &camel(name))
            .replace("{{sdk_dependency}}", &sdk_dependency)
            .replace("{{lang}}", lang_name)
            .replace("{{lang_notes}}", lang_notes)
            .replace("{{wit_place}}", wit_place)
    };
    let mut written = Vec::new();
    for f in files.iter().chain(COMMON) {
        let path = dir.join(f.path);
        let fail = |e: std::io::Error| ScaffoldError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        let text = if f.fill {
            fill(f.text)
        } else {
            f.text.to_string()
        };
        std::fs::write(&path, text).map_err(fail)?;
        if f.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(fail)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// `[a-z][a-z0-9]*` parts joined by single dashes.
fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `no-shouting` → `NoShouting`.
fn camel(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_made_into_types() {
        for good in ["a", "no-shouting", "v2-guard"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a--b", "2fa", "Shout", "a_b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(camel("no-shouting"), "NoShouting");
        assert_eq!(camel("v2-guard"), "V2Guard");
    }

    #[test]
    fn a_project_is_written_with_every_placeholder_filled_and_not_over_another() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let at = dir.path().join("p");
            let files = new_project("word-guard", lang, &at, Some(Path::new("../sdk"))).unwrap();
            assert!(files.iter().any(|f| f.ends_with("events.jsonl")));
            assert!(files.iter().any(|f| f.ends_with("build")));
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                if !f.ends_with("hookwire.wit") {
                    assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
                }
            }
            let e = new_project("word-guard", lang, &at, None).unwrap_err();
            assert!(matches!(e, ScaffoldError::Exists(_)), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("p");
        new_project("word-guard", Lang::Rust, &at, Some(Path::new("../sdk"))).unwrap();
        let cargo = std::fs::read_to_string(at.join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains("hookwire-plugin = { path = \"../sdk\" }"),
            "{cargo}"
        );
        let lib = std::fs::read_to_string(at.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("pub struct WordGuard")
                && lib.contains("const NAME: &str = \"word-guard\";")
        );
        let build = std::fs::read_to_string(at.join("build")).unwrap();
        assert!(build.contains("release/word_guard.wasm"), "{build}");
    }
}
