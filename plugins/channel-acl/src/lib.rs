//! Refuses connections of blocked users, and subscriptions to channels whose rule
//! the token's claims do not meet. Config (the rules shown are the default, which
//! keeps `admin:*` to tokens with `"role": "admin"`):
//!
//! ```json
//! {"deny_users": ["mallory"],
//!  "rules": [{"channels": "admin:*", "claim": "role", "equals": "admin"}]}
//! ```
//!
//! In `channels`, `*` matches any run of characters. Every rule whose pattern
//! matches the channel must hold.

use hookwire_plugin::Refusal;
use hookwire_plugin::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelAcl {
    #[serde(default)]
    deny_users: Vec<String>,
    #[serde(default = "admin_only")]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    channels: String,
    claim: String,
    equals: Value,
}

fn admin_only() -> Vec<Rule> {
    vec![Rule {
        channels: "admin:*".to_owned(),
        claim: "role".to_owned(),
        equals: json!("admin"),
    }]
}

impl Plugin for ChannelAcl {
    const NAME: &str = "channel-acl";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::CONNECT.union(Hooks::SUBSCRIBE).union(Hooks::REFRESH);

    fn init(config: Value) -> Result<Self, String> {
        parse_config(config)
    }

    fn on_connect(&mut self, conn: &Connection) -> ConnectDecision {
        if self.deny_users.contains(&conn.user) {
            return ConnectDecision::refuse(format!("user {} is blocked", conn.user));
        }
        ConnectDecision::Accept
    }

    /// A user blocked after connecting (a hot-reloaded `deny_users`) cannot extend the
    /// connection with a new token: it closes when its current one expires.
    fn on_refresh(&mut self, conn: &Connection, _claims: &Value) -> RefreshDecision {
        if self.deny_users.contains(&conn.user) {
            return RefreshDecision::Refuse(
                Refusal::new(format!("user {} is blocked", conn.user)).with_code("user_blocked"),
            );
        }
        RefreshDecision::Allow
    }

    fn on_subscribe(&mut self, conn: &Connection, channel: &str) -> Decision {
        let broken = self.rules.iter().find(|rule| {
            glob_matches(&rule.channels, channel) && conn.claim(&rule.claim) != Some(&rule.equals)
        });
        match broken {
            Some(rule) => Decision::refuse(format!(
                "channel {channel} needs token claim {} = {}",
                rule.claim, rule.equals
            )),
            None => Decision::Allow,
        }
    }
}

export!(ChannelAcl);

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn glob_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => name.strip_prefix(head).is_some_and(|rest| {
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob_matches(tail, &rest[i..]))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: &str) -> Connection {
        Connection::new("alice").with_claims(json!({"sub": "alice", "role": role}))
    }

    #[test]
    fn by_default_only_admins_subscribe_to_admin_channels() {
        let mut acl = ChannelAcl::init(json!({})).unwrap();
        assert_eq!(
            acl.on_subscribe(&user("admin"), "admin:ops"),
            Decision::Allow
        );
        assert_eq!(
            acl.on_subscribe(&user("member"), "chat:lobby"),
            Decision::Allow
        );
        assert_eq!(
            acl.on_subscribe(&user("member"), "admin:ops").refusal(),
            Some(r#"channel admin:ops needs token claim role = "admin""#)
        );
        assert!(
            !acl.on_subscribe(&Connection::new("bob"), "admin:ops")
                .is_allowed()
        );
    }

    #[test]
    fn blocked_users_cannot_connect() {
        let mut acl = ChannelAcl::init(json!({"deny_users": ["mallory"]})).unwrap();
        assert_eq!(
            acl.on_connect(&Connection::new("mallory")).refusal(),
            Some("user mallory is blocked")
        );
        assert_eq!(
            acl.on_connect(&Connection::new("alice")),
            ConnectDecision::Accept
        );
    }

    #[test]
    fn configured_rules_replace_the_default() {
        let mut acl = ChannelAcl::init(json!({"rules": [
            {"channels": "team:*:private", "claim": "team_lead", "equals": true}
        ]}))
        .unwrap();
        let lead = Connection::new("li").with_claims(json!({"team_lead": true}));
        assert!(acl.on_subscribe(&lead, "team:red:private").is_allowed());
        assert!(
            !acl.on_subscribe(&user("admin"), "team:red:private")
                .is_allowed()
        );
        assert!(acl.on_subscribe(&user("member"), "admin:ops").is_allowed());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("admin:*", "admin:"));
        assert!(glob_matches("*:ops", "admin:ops"));
        assert!(glob_matches("a*b*c", "a-x-b-y-c"));
        assert!(!glob_matches("a*b*c", "a-x-c"));
        assert!(!glob_matches("admin:*", "administrator"));
        assert!(glob_matches("exact", "exact") && !glob_matches("exact", "exact2"));
    }
}
