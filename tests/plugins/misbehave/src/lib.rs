//! A plugin that fails on request, for the broker's tests of deadlines, memory
//! caps, traps, output caps and hot reload.
//!
//! `on_publish` reads the payload's `"do"` field:
//!
//! | `do`       | what happens                                             |
//! |------------|----------------------------------------------------------|
//! | `"loop"`   | spins forever (the deadline must stop it)                |
//! | `"oom"`    | allocates and touches 1 MiB blocks until memory runs out |
//! | `"trap"`   | panics with "asked to trap"                              |
//! | `"big"`    | replaces the payload with a 1 MiB JSON string            |
//! | `"refuse"` | refuses with "asked to refuse"                           |
//! | `"log"`    | logs "asked to log" at info level, then as below         |
//! | `"echo"`   | logs the payload's `"text"` at info level, then as below |
//! | `"leak"`   | keeps a touched 1 MiB block for good, then as below      |
//! | `"conn"`   | adds `meta.conn`: the publisher's connection `meta`       |
//! | `"count"`  | adds `meta.count`: `increment("count", 1)` in shared state |
//! | `"route"`  | sends it to `<channel>-routed` instead, then as below    |
//! | other      | allows, adding `meta.calls` and `meta.tag`               |
//!
//! `meta.calls` counts the publications this instance has handled, so it starts
//! again at 1 in an instance made after a failure. `meta.tag` is the config's
//! `tag` (default `""`), so a reload test can tell versions apart.
//!
//! `on_subscribe` does the same for a channel named `<namespace>:<do>` (`loop`,
//! `oom`, `trap`, `refuse`). Config `{"init": "fail"}` fails the load.
//!
//! `on_refresh` refuses a token whose claims have `"refuse_refresh": true` (code
//! `asked`), and otherwise replaces the connection's meta with
//! `{"refreshed": <the new token's "tag" claim>}`.

use std::hint::black_box;

use hookwire_plugin::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    tag: String,
    #[serde(default)]
    init: String,
}

pub struct Misbehave {
    tag: String,
    calls: u64,
    leaked: Vec<Vec<u8>>,
}

impl Plugin for Misbehave {
    const NAME: &str = "misbehave";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH.union(Hooks::SUBSCRIBE).union(Hooks::REFRESH);

    fn init(config: Value) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.init == "fail" {
            return Err("init failed on purpose".to_owned());
        }
        Ok(Self {
            tag: config.tag,
            calls: 0,
            leaked: Vec::new(),
        })
    }

    fn on_subscribe(&mut self, _conn: &Connection, channel: &str) -> Decision {
        let (_, action) = channel.split_once(':').unwrap_or(("", channel));
        misbehave(action).unwrap_or(Decision::Allow)
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        self.calls += 1;
        let action = publication
            .data()
            .get("do")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(decision) = misbehave(action) {
            return decision;
        }
        match action {
            "big" => publication.set_data(json!("x".repeat(1 << 20))),
            "log" => hookwire_plugin::log::info!("asked to log"),
            "route" => {
                let routed = format!("{}-routed", publication.channel());
                publication.set_channels([routed]);
            }
            "leak" => self.leaked.push(black_box(vec![1u8; 1 << 20])),
            "count" => {
                let count = hookwire_plugin::state::increment("count", 1, None);
                publication.add_meta("count", json!(count.ok()));
            }
            "conn" => {
                let meta = publication.connection().map(|c| c.meta.clone());
                publication.add_meta("conn", meta.unwrap_or(Value::Null));
            }
            "echo" => {
                let text = publication
                    .data()
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                hookwire_plugin::log::info!("echo: {}", text.unwrap_or_default());
            }
            _ => {}
        }
        publication.add_meta("calls", json!(self.calls));
        publication.add_meta("tag", json!(self.tag));
        Decision::Allow
    }

    fn on_refresh(&mut self, _conn: &Connection, claims: &Value) -> RefreshDecision {
        if claims.get("refuse_refresh") == Some(&json!(true)) {
            return RefreshDecision::Refuse(
                hookwire_plugin::Refusal::new("asked to refuse the refresh").with_code("asked"),
            );
        }
        let tag = claims.get("tag").cloned().unwrap_or(Value::Null);
        RefreshDecision::replace_meta(json!({ "refreshed": tag }))
    }
}

export!(Misbehave);

/// The failures both hooks share; `None` for an action that is not one of them.
fn misbehave(action: &str) -> Option<Decision> {
    match action {
        "loop" => loop {
            black_box(());
        },
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0_u8; 1 << 20];
                // Touch every page, so the memory is really used.
                block.iter_mut().step_by(4096).for_each(|byte| *byte = 1);
                hoard.push(black_box(block));
            }
        }
        "trap" => panic!("asked to trap"),
        "refuse" => Some(Decision::refuse("asked to refuse")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(plugin: &mut Misbehave, data: Value) -> (Decision, Publication<'static>) {
        let mut publication = Publication::new("chat:lobby", data).from_user("alice");
        (plugin.on_publish(&mut publication), publication)
    }

    #[test]
    fn counts_calls_and_tags_allowed_publications() {
        let mut plugin = Misbehave::init(json!({"tag": "v2"})).unwrap();
        publish(&mut plugin, json!({}));
        let (decision, publication) = publish(&mut plugin, json!({"do": "nothing"}));
        assert_eq!(decision, Decision::Allow);
        assert_eq!(publication.meta_added()["calls"], 2);
        assert_eq!(publication.meta_added()["tag"], "v2");
    }

    #[test]
    fn refuses_and_answers_big_on_request() {
        let mut plugin = Misbehave::init(json!({})).unwrap();
        let (decision, _) = publish(&mut plugin, json!({"do": "refuse"}));
        assert_eq!(decision.refusal(), Some("asked to refuse"));
        let (_, publication) = publish(&mut plugin, json!({"do": "big"}));
        assert_eq!(
            publication.data_after().unwrap().as_str().unwrap().len(),
            1 << 20
        );
        let conn = Connection::new("alice");
        assert!(!plugin.on_subscribe(&conn, "chat:refuse").is_allowed());
        assert!(plugin.on_subscribe(&conn, "chat:lobby").is_allowed());
    }

    #[test]
    #[should_panic(expected = "asked to trap")]
    fn traps_on_request() {
        let mut plugin = Misbehave::init(json!({})).unwrap();
        publish(&mut plugin, json!({"do": "trap"}));
    }

    #[test]
    fn init_fails_on_request() {
        assert_eq!(
            Misbehave::init(json!({"init": "fail"})).err().as_deref(),
            Some("init failed on purpose")
        );
    }
}
