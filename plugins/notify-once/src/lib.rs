//! A notification rule done in-process: a chat message (`data.text`) that mentions
//! `@name` notifies `user:name` with
//! `{"kind": "mention", "from": <user>, "channel": <channel>, "text": <text>}` at most
//! once per `window_minutes` per sender and name, over every instance of the plugin
//! (and every version: the marks live in the plugin's shared `state`). Config, with
//! its defaults:
//!
//! ```json
//! {"target_namespace": "user", "window_minutes": 10, "max_mentions": 5}
//! ```
//!
//! Metrics on `/metrics`: `hookwire_plugin_notify_once_mentions_total{outcome}`
//! (`sent`, `suppressed`, `failed`: the state store refused) and
//! `hookwire_plugin_notify_once_unsubscribes_total{reason}` (its `on-unsubscribe`
//! hook, counting why subscriptions of its namespaces end).

use hookwire_plugin::metrics::Counter;
use hookwire_plugin::{prelude::*, state};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "user_namespace")]
    target_namespace: String,
    #[serde(default = "ten")]
    window_minutes: u64,
    #[serde(default = "five")]
    max_mentions: usize,
}

fn user_namespace() -> String {
    "user".to_owned()
}

fn ten() -> u64 {
    10
}

fn five() -> usize {
    5
}

pub struct NotifyOnce {
    config: Config,
    mentions: Counter,
    unsubscribes: Counter,
}

impl Plugin for NotifyOnce {
    const NAME: &str = "notify-once";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH.union(Hooks::UNSUBSCRIBE);

    fn init(config: Value) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.window_minutes == 0 {
            return Err("invalid config: window_minutes must be at least 1".into());
        }
        Ok(Self {
            config,
            mentions: Counter::define(
                "mentions_total",
                "Mentions seen, by outcome.",
                &["outcome"],
            )?,
            unsubscribes: Counter::define(
                "unsubscribes_total",
                "Subscriptions ended, by reason.",
                &["reason"],
            )?,
        })
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        let Some(text) = publication.data().get("text").and_then(Value::as_str) else {
            return Decision::Allow;
        };
        let Some(from) = publication.user() else {
            return Decision::Allow;
        };
        let ttl = self.config.window_minutes * 60_000;
        let mut names: Vec<&str> = Vec::new();
        for name in hookwire_plugin::text::mentions(text) {
            if names.len() == self.config.max_mentions {
                break;
            }
            if name != from && !names.contains(&name) {
                names.push(name);
            }
        }
        let mut targets = Vec::new();
        for name in names {
            // The first mention in a window sets the mark; later ones find it set.
            let key = format!("{from}>{name}");
            let outcome = match state::compare_and_set(&key, None, Some(b"1"), Some(ttl)) {
                Ok(true) => {
                    targets.push(format!("{}:{name}", self.config.target_namespace));
                    "sent"
                }
                Ok(false) => "suppressed",
                Err(e) => {
                    hookwire_plugin::log::warn!("state refused the mark {key}: {e:?}");
                    "failed"
                }
            };
            let _ = self.mentions.add(&[outcome], 1.0);
        }
        let notice = json!({
            "kind": "mention",
            "from": from,
            "channel": publication.channel(),
            "text": text,
        });
        for target in targets {
            publication.emit(target, notice.clone());
        }
        Decision::Allow
    }

    fn on_unsubscribe(&mut self, _conn: &Connection, _channel: &str, reason: &str) {
        let reason = if reason == "client" {
            "client"
        } else {
            "other"
        };
        let _ = self.unsubscribes.add(&[reason], 1.0);
    }
}

export!(NotifyOnce);

#[cfg(test)]
mod tests {
    use super::*;

    fn notified(plugin: &mut NotifyOnce, from: &str, text: &str) -> Vec<String> {
        let mut publication = Publication::new("chat:lobby", json!({"text": text})).from_user(from);
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        publication
            .emitted()
            .iter()
            .map(|e| e.channel.clone())
            .collect()
    }

    #[test]
    fn a_sender_notifies_each_name_once_per_window() {
        state::clear();
        let mut plugin = NotifyOnce::init(json!({"window_minutes": 1})).unwrap();
        assert_eq!(
            notified(&mut plugin, "alice", "@bob @carol"),
            ["user:bob", "user:carol"]
        );
        assert_eq!(
            notified(&mut plugin, "alice", "@bob again"),
            Vec::<String>::new()
        );
        assert_eq!(
            notified(&mut plugin, "dave", "@bob"),
            ["user:bob"],
            "another sender"
        );
        assert_eq!(
            notified(&mut plugin, "alice", "@alice"),
            Vec::<String>::new(),
            "self"
        );
        state::clear();
        assert_eq!(
            notified(&mut plugin, "alice", "@bob"),
            ["user:bob"],
            "window over"
        );
    }

    #[test]
    fn a_zero_window_is_refused() {
        assert!(NotifyOnce::init(json!({"window_minutes": 0})).is_err());
    }
}
