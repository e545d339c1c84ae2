//! An allow-everything plugin whose module is about 2 MB, to time hot reload of a
//! large module. The bulk is a blob made by `build.rs`; each publication reads one
//! byte of it through `black_box`, so the optimiser cannot drop it.
//!
//! For `hookwire-bench hook`, config `{"steps": [...]}` makes each publication also
//! do some of the things real plugins do, to time each part of a hook call:
//! `"bytes"` (copy the payload in), `"json"` (and parse it), `"connection"` (fetch the
//! publisher's connection, claims parsed), `"time"` (read the clock), `"meta"` (add a
//! `meta` field, so the answer is an edit), `"state"` (a shared-state `get` and an
//! `increment` of one key).

use std::hint::black_box;

use hookwire_plugin::prelude::*;
use serde::Deserialize;

static BLOB: &[u8; 2_000_000] = include_bytes!(concat!(env!("OUT_DIR"), "/blob.bin"));

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Step {
    Bytes,
    Json,
    Connection,
    Time,
    Meta,
    State,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    steps: Vec<Step>,
}

pub struct Big {
    calls: usize,
    steps: Vec<Step>,
}

impl Plugin for Big {
    const NAME: &str = "big";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Value) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        Ok(Self {
            calls: 0,
            steps: config.steps,
        })
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        self.calls += 1;
        black_box(BLOB[black_box(self.calls) % BLOB.len()]);
        for step in &self.steps {
            match step {
                Step::Bytes => {
                    black_box(publication.data_bytes());
                }
                Step::Json => {
                    black_box(publication.data());
                }
                Step::Connection => {
                    black_box(publication.connection());
                }
                Step::Time => {
                    black_box(hookwire_plugin::time::now_unix_millis());
                }
                Step::Meta => publication.add_meta("calls", json!(self.calls)),
                Step::State => {
                    let _ = black_box(hookwire_plugin::state::get("calls"));
                    let _ = black_box(hookwire_plugin::state::increment("calls", 1, None));
                }
            }
        }
        Decision::Allow
    }
}

export!(Big);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_everything_without_edits() {
        let mut plugin = Big::init(json!({})).unwrap();
        let mut publication = Publication::new("chat:lobby", json!({"text": "hi"}));
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        assert!(publication.edits().is_empty() && !publication.payload_read());
    }

    #[test]
    fn steps_read_and_edit() {
        let mut plugin = Big::init(json!({"steps": ["json", "meta"]})).unwrap();
        let mut publication = Publication::new("chat:lobby", json!({"text": "hi"}));
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        assert!(publication.payload_read());
        assert_eq!(publication.meta_added().get("calls"), Some(&json!(1)));
        assert!(Big::init(json!({"steps": ["nope"]})).is_err());
    }
}
