//! Metadata plugins attach (a connection's `meta`, a publication's `meta`): JSON object
//! fields kept in order, a later value for a key replacing the earlier one, written out
//! as one object.

use serde_json::value::RawValue;

/// Fields of a JSON object, in order; values are JSON text.
pub type MetaFields = Vec<(String, Box<RawValue>)>;

/// Sets `key`: replaces its value where it is, or appends it.
pub fn set(fields: &mut MetaFields, key: String, value: Box<RawValue>) {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => fields.push((key, value)),
    }
}

/// A JSON object from fields (keys escaped, values already JSON).
pub fn object_text(fields: &[(String, Box<RawValue>)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).expect("a string serializes"));
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).unwrap()
    }

    #[test]
    fn a_later_value_replaces_the_key_in_place() {
        let mut fields = MetaFields::new();
        set(&mut fields, "a".into(), raw("1"));
        set(&mut fields, "b\"".into(), raw(r#"{"x":[]}"#));
        set(&mut fields, "a".into(), raw("\"two\""));
        assert_eq!(object_text(&fields), r#"{"a":"two","b\"":{"x":[]}}"#);
        assert_eq!(object_text(&[]), "{}");
    }
}
