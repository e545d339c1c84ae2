//! A plugin of the 0.1.0 contract, built from `wit/0.1.0/` with wit-bindgen directly
//! (the SDK targets 0.2.0), so the broker's support for 0.1.0 components is tested
//! against a real build made from source. It hooks `publish` only: a payload without a
//! string `text` is refused (0.1.0 refusals have no code); any other is tagged with
//! meta `contract: "0.1.0"`.

#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../wit/0.1.0",
    });
}

use bindings::exports::hookwire::plugin::hooks::{Guest, HookSet, PluginInfo};
use bindings::hookwire::plugin::types::{
    ConnectDecision, Connection, Decision, MetaField, Publication, PublishDecision, PublishEdit,
};

pub struct LegacyGuard;

/// The decision on a payload (JSON text).
fn decide(data: &[u8]) -> PublishDecision {
    let text = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("text").map(serde_json::Value::is_string));
    if text != Some(true) {
        return PublishDecision::Refuse("field \"text\" must be a string".to_string());
    }
    PublishDecision::Modify(PublishEdit {
        data: None,
        add_meta: vec![MetaField {
            key: "contract".to_string(),
            value: "\"0.1.0\"".to_string(),
        }],
        set_channels: None,
        add_channels: Vec::new(),
        emit: Vec::new(),
    })
}

impl Guest for LegacyGuard {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "legacy-guard".to_string(),
            version: "0.1.0".to_string(),
            hooks: HookSet::PUBLISH,
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_connect(_conn: Connection) -> ConnectDecision {
        ConnectDecision::Accept
    }

    fn on_subscribe(_conn: Connection, _channel: String) -> Decision {
        Decision::Allow
    }

    fn on_publish(publication: &Publication) -> PublishDecision {
        decide(&publication.data())
    }

    fn on_disconnect(_conn: Connection, _reason: String) {}
}

// The exports' symbol names are not linkable in a native build (`cargo test`).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::{LegacyGuard, bindings};
    bindings::export!(LegacyGuard with_types_in bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_text_passes_tagged_and_anything_else_is_refused() {
        assert!(matches!(
            decide(br#"{"text":"hi"}"#),
            PublishDecision::Modify(_)
        ));
        for bad in [&br#"{"text":5}"#[..], b"{}", b"not json"] {
            assert!(matches!(decide(bad), PublishDecision::Refuse(_)));
        }
    }
}
