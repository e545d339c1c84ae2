//! Refuses publications whose payload breaks the field rules of its config:
//!
//! ```json
//! {"fields": {"text": {"type": "string", "required": true, "max_len": 500},
//!             "kind": {"enum": ["msg", "typing"]}},
//!  "allow_extra": true}
//! ```
//!
//! A rule may give `type` (`string`, `number`, `integer`, `boolean`, `object`,
//! `array`, `null`), `required` (default false), `max_len` (characters of a string,
//! items of an array) and `enum` (the allowed values). `allow_extra: false` refuses
//! fields without a rule. The payload must be a JSON object.

use std::collections::BTreeMap;

use hookwire_plugin::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaGuard {
    #[serde(default)]
    fields: BTreeMap<String, Rule>,
    #[serde(default = "yes")]
    allow_extra: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(rename = "type")]
    kind: Option<Kind>,
    #[serde(default)]
    required: bool,
    max_len: Option<usize>,
    #[serde(rename = "enum")]
    allowed: Option<Vec<Value>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Kind {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

fn yes() -> bool {
    true
}

impl Plugin for SchemaGuard {
    const NAME: &str = "schema-guard";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Value) -> Result<Self, String> {
        parse_config(config)
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        match self.check(publication.data()) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::refuse_with_code("invalid_payload", reason),
        }
    }
}

export!(SchemaGuard);

impl SchemaGuard {
    fn check(&self, data: &Value) -> Result<(), String> {
        let Value::Object(object) = data else {
            return Err("data must be a JSON object".to_owned());
        };
        for (field, rule) in &self.fields {
            match object.get(field) {
                Some(value) => rule.check(field, value)?,
                None if rule.required => return Err(format!("field {field:?} is required")),
                None => {}
            }
        }
        match object.keys().find(|key| !self.fields.contains_key(*key)) {
            Some(extra) if !self.allow_extra => Err(format!("field {extra:?} is not allowed")),
            _ => Ok(()),
        }
    }
}

impl Rule {
    fn check(&self, field: &str, value: &Value) -> Result<(), String> {
        if let Some(kind) = self.kind
            && !kind.matches(value)
        {
            return Err(format!("field {field:?} must be {}", kind.described()));
        }
        let len = match value {
            Value::String(s) => s.chars().count(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if let Some(max) = self.max_len
            && len > max
        {
            return Err(format!("field {field:?} is longer than {max}"));
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!(
                "field {field:?} must be one of {}",
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

impl Kind {
    fn matches(self, value: &Value) -> bool {
        match self {
            Kind::String => value.is_string(),
            Kind::Number => value.is_number(),
            Kind::Integer => value.is_i64() || value.is_u64(),
            Kind::Boolean => value.is_boolean(),
            Kind::Object => value.is_object(),
            Kind::Array => value.is_array(),
            Kind::Null => value.is_null(),
        }
    }

    fn described(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Boolean => "true or false",
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::Null => "null",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> SchemaGuard {
        SchemaGuard::init(json!({
            "fields": {
                "text": {"type": "string", "required": true, "max_len": 5},
                "kind": {"enum": ["msg", "typing"]},
                "n": {"type": "integer"}
            },
            "allow_extra": false
        }))
        .unwrap()
    }

    fn check(data: Value) -> Option<String> {
        let mut publication = Publication::new("chat:lobby", data).from_user("alice");
        guard()
            .on_publish(&mut publication)
            .refusal()
            .map(str::to_owned)
    }

    #[test]
    fn valid_data_passes_untouched() {
        let mut publication = Publication::new("chat:lobby", json!({"text": "hi", "kind": "msg"}));
        assert_eq!(guard().on_publish(&mut publication), Decision::Allow);
        assert!(publication.edits().is_empty());
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let refusals = [
            (json!({}), r#"field "text" is required"#),
            (json!({"text": 1}), r#"field "text" must be a string"#),
            (
                json!({"text": "héllo!"}),
                r#"field "text" is longer than 5"#,
            ),
            (
                json!({"text": "a", "kind": "x"}),
                r#"field "kind" must be one of "msg", "typing""#,
            ),
            (
                json!({"text": "a", "n": 1.5}),
                r#"field "n" must be an integer"#,
            ),
            (
                json!({"text": "a", "extra": 1}),
                r#"field "extra" is not allowed"#,
            ),
            (json!(["text"]), "data must be a JSON object"),
        ];
        for (data, reason) in refusals {
            assert_eq!(check(data.clone()).as_deref(), Some(reason), "{data}");
        }
    }

    #[test]
    fn extra_fields_pass_by_default() {
        let mut guard = SchemaGuard::init(json!({"fields": {"text": {"type": "string"}}})).unwrap();
        let mut publication = Publication::new("chat:lobby", json!({"other": true}));
        assert!(guard.on_publish(&mut publication).is_allowed());
    }

    #[test]
    fn a_config_typo_fails_the_load() {
        let err = SchemaGuard::init(json!({"fields": {"text": {"max_length": 5}}}))
            .err()
            .unwrap();
        assert!(err.contains("unknown field `max_length`"), "{err}");
    }
}
