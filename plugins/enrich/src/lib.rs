//! Adds `meta.received_at` (milliseconds since the epoch, from the broker's clock)
//! and chosen claims of the publisher's token to every publication, without
//! reading the payload. Config:
//!
//! ```json
//! {"claims": ["name", "team"]}
//! ```
//!
//! A claim `name` becomes `meta.name`; claims the token lacks are left out.
//! Publications without a connection (server API, NATS) get only `received_at`.

use hookwire_plugin::prelude::*;
use hookwire_plugin::time;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrich {
    #[serde(default)]
    claims: Vec<String>,
}

impl Plugin for Enrich {
    const NAME: &str = "enrich";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Value) -> Result<Self, String> {
        parse_config(config)
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        publication.add_meta("received_at", json!(time::now_unix_millis()));
        // Claim by claim: only the claims asked for are copied in.
        for name in &self.claims {
            if let Some(value) = publication.claim(name) {
                publication.add_meta(name.clone(), value);
            }
        }
        Decision::Allow
    }
}

export!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> Enrich {
        Enrich::init(json!({"claims": ["name", "team"]})).unwrap()
    }

    #[test]
    fn adds_time_and_claims_without_reading_the_payload() {
        let alice = Connection::new("alice").with_claims(json!({"sub": "alice", "name": "Alice"}));
        let mut publication =
            Publication::new("chat:lobby", json!({"text": "hi"})).with_connection(alice);
        let before = time::now_unix_millis();

        assert_eq!(plugin().on_publish(&mut publication), Decision::Allow);

        let meta = publication.meta_added();
        let received_at = meta["received_at"].as_u64().unwrap();
        assert!((before..=time::now_unix_millis()).contains(&received_at));
        assert_eq!(meta["name"], "Alice");
        assert!(!meta.contains_key("team"), "the token has no team claim");
        assert!(!publication.payload_read());
    }

    #[test]
    fn api_publications_get_only_the_time() {
        let mut publication = Publication::new("news:today", json!("hello"));
        plugin().on_publish(&mut publication);
        let keys: Vec<&String> = publication.meta_added().keys().collect();
        assert_eq!(keys, ["received_at"]);
    }
}
