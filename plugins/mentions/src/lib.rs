//! A chat message (`data.text`, a string) that mentions `@name` is also sent to
//! `user:name` as
//! `{"kind": "mention", "from": <user>, "channel": <channel>, "text": <text>}`.
//! Config, with its defaults:
//!
//! ```json
//! {"target_namespace": "user", "max_mentions": 5}
//! ```
//!
//! A name is letters, digits, `_` and `-`; an `@` inside a word (an e-mail
//! address) is no mention. Each name counts once, the first `max_mentions` names
//! are notified, and mentioning yourself notifies nobody.

use hookwire_plugin::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mentions {
    #[serde(default = "user_namespace")]
    target_namespace: String,
    #[serde(default = "five")]
    max_mentions: usize,
}

fn user_namespace() -> String {
    "user".to_owned()
}

fn five() -> usize {
    5
}

impl Plugin for Mentions {
    const NAME: &str = "mentions";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Value) -> Result<Self, String> {
        parse_config(config)
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        let Some(text) = publication.data().get("text").and_then(Value::as_str) else {
            return Decision::Allow;
        };
        let from = publication.user();
        let mut names: Vec<&str> = Vec::new();
        for name in hookwire_plugin::text::mentions(text) {
            if names.len() == self.max_mentions {
                break;
            }
            if Some(name) != from && !names.contains(&name) {
                names.push(name);
            }
        }
        let notice = json!({
            "kind": "mention",
            "from": from,
            "channel": publication.channel(),
            "text": text,
        });
        let targets: Vec<String> = names
            .iter()
            .map(|name| format!("{}:{name}", self.target_namespace))
            .collect();
        for target in targets {
            publication.emit(target, notice.clone());
        }
        Decision::Allow
    }
}

export!(Mentions);

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(config: Value, data: Value) -> Vec<(String, Value)> {
        let mut plugin = Mentions::init(config).unwrap();
        let mut publication = Publication::new("chat:lobby", data).from_user("alice");
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        let emitted = publication.emitted().iter();
        emitted
            .map(|e| (e.channel.clone(), e.data.clone()))
            .collect()
    }

    #[test]
    fn notifies_each_mentioned_user() {
        let text = "@bob and @carol-2, see mail@example.com and @bob again";
        let sent = emitted(json!({}), json!({"text": text}));
        let notice =
            json!({"kind": "mention", "from": "alice", "channel": "chat:lobby", "text": text});
        assert_eq!(
            sent,
            [
                ("user:bob".into(), notice.clone()),
                ("user:carol-2".into(), notice)
            ]
        );
    }

    #[test]
    fn honours_the_limit_namespace_and_skips_self() {
        let sent = emitted(
            json!({"target_namespace": "inbox", "max_mentions": 2}),
            json!({"text": "@alice @a @b @c"}),
        );
        let channels: Vec<&str> = sent.iter().map(|(channel, _)| channel.as_str()).collect();
        assert_eq!(channels, ["inbox:a", "inbox:b"]);
    }

    #[test]
    fn other_payloads_pass_untouched() {
        assert!(emitted(json!({}), json!({"text": "no one here @"})).is_empty());
        assert!(emitted(json!({}), json!({"kind": "typing"})).is_empty());
        assert!(emitted(json!({}), json!("@bob as a bare string")).is_empty());
    }
}
