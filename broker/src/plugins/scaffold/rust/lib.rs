//! Hookwire plugin "{{name}}": refuses a publication whose `text` is longer than
//! `max_len` characters and tags every other one with meta `checked_by`.

use hookwire_plugin::prelude::*;
use serde::Deserialize;

/// The plugin's configuration is the plugin: init deserializes it.
#[derive(Deserialize)]
pub struct {{Name}} {
    #[serde(default = "default_max_len")]
    max_len: usize,
}

fn default_max_len() -> usize {
    500
}

impl Plugin for {{Name}} {
    const NAME: &str = "{{name}}";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    // The broker calls only the hooks declared here.
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Value) -> Result<Self, String> {
        parse_config(config)
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        let text = publication.data()["text"].as_str().unwrap_or_default();
        if text.chars().count() > self.max_len {
            return Decision::refuse(format!("the text is too long (over {} characters)", self.max_len));
        }
        publication.add_meta("checked_by", json!(Self::NAME));
        Decision::Allow
    }
}

export!({{Name}});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_long_text_and_tags_the_rest() {
        let mut plugin = {{Name}}::init(json!({"max_len": 5})).unwrap();
        let mut long = Publication::new("chat:lobby", json!({"text": "far too long"}));
        assert!(plugin.on_publish(&mut long).refusal().unwrap().contains("too long"));
        let mut short = Publication::new("chat:lobby", json!({"text": "hi"})).from_user("alice");
        assert_eq!(plugin.on_publish(&mut short), Decision::Allow);
        assert_eq!(short.meta_added()["checked_by"], "{{name}}");
    }

    #[test]
    fn rejects_a_bad_config() {
        assert!({{Name}}::init(json!({"max_len": "ten"})).is_err());
    }
}
