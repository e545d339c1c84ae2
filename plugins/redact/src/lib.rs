//! Masks e-mail addresses, card numbers and configured words in every string of the
//! payload, then sets `meta.redacted` to the number of masks. Config:
//!
//! ```json
//! {"words": ["darn", "heck"], "emails": true, "cards": true}
//! ```
//!
//! What each detector matches:
//! - **words**: whole words in any (ASCII) case; they become asterisks of the same
//!   length (`darn` → `****`, not inside `darning`).
//! - **emails**: `local@domain.tld` (letters, digits, `._%+-` before the `@`, a dotted
//!   domain with a 2-letter or longer top level); they become `[email]`.
//! - **cards**: a run of 13 to 19 digits, maybe grouped by single spaces or dashes,
//!   standing alone (not inside a longer run of digits or a word), **whose Luhn checksum
//!   holds** (every payment card number's does); it becomes `[card]`. So ids,
//!   timestamps in milliseconds and phone numbers (which fail the checksum nine times in
//!   ten) pass unchanged; numbers in JSON (not strings) are never touched.
//!
//! A payload with nothing to mask passes untouched.

use hookwire_plugin::prelude::*;
use regex_lite::{Regex, escape};
use serde::Deserialize;

pub struct Redact {
    /// Each pattern, how a match is masked and the test text must pass first, applied
    /// in order.
    masks: Vec<(Regex, Mask, Prefilter)>,
}

/// A cheap test a string must pass before its pattern runs: regex-lite has no literal
/// optimisations, so this skips most of the work on text that cannot match.
enum Prefilter {
    /// E-mail addresses contain `@`.
    At,
    /// Card numbers have at least 13 digits.
    Digits,
    /// One of the words, ASCII lower-cased, occurs in the ASCII lower-cased text
    /// (regex-lite's case folding is ASCII only, so this never skips a match).
    Words(Vec<String>),
}

impl Prefilter {
    fn may_match(&self, text: &str) -> bool {
        match self {
            Self::At => text.contains('@'),
            Self::Digits => text.bytes().filter(u8::is_ascii_digit).count() >= 13,
            Self::Words(words) => {
                let lower = text.to_ascii_lowercase();
                words.iter().any(|w| lower.contains(w.as_str()))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Mask {
    Asterisks,
    Text(&'static str),
    /// `[card]`, when the digits pass the Luhn check; otherwise the match stays.
    Card,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    words: Vec<String>,
    #[serde(default = "yes")]
    emails: bool,
    #[serde(default = "yes")]
    cards: bool,
}

fn yes() -> bool {
    true
}

const EMAIL: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
const CARD: &str = r"\b\d(?:[ -]?\d){12,18}\b";

impl Plugin for Redact {
    const NAME: &str = "redact";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH.union(Hooks::HISTORY);

    fn init(config: Value) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        let mut masks = Vec::new();
        // Addresses first: their local part may hold digits a card match would eat.
        if config.emails {
            masks.push((
                Regex::new(EMAIL).expect("valid pattern"),
                Mask::Text("[email]"),
                Prefilter::At,
            ));
        }
        if config.cards {
            masks.push((
                Regex::new(CARD).expect("valid pattern"),
                Mask::Card,
                Prefilter::Digits,
            ));
        }
        if !config.words.is_empty() {
            let words: Vec<String> = config.words.iter().map(|w| whole_word(w)).collect();
            let pattern = format!("(?i){}", words.join("|"));
            let words = Regex::new(&pattern).map_err(|e| format!("invalid words: {e}"))?;
            let lower = config
                .words
                .iter()
                .map(|w| w.to_ascii_lowercase())
                .collect();
            masks.push((words, Mask::Asterisks, Prefilter::Words(lower)));
        }
        Ok(Self { masks })
    }

    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        let mut data = publication.data().clone();
        let count = self.redact(&mut data);
        if count > 0 {
            publication.set_data(data);
            publication.add_meta("redacted", json!(count));
        }
        Decision::Allow
    }

    /// History written before this plugin (or this configuration) was deployed is
    /// masked on the way out, so a new rule covers what is already stored.
    fn on_history(
        &mut self,
        _conn: &Connection,
        _channel: &str,
        entries: &[HistoryEntry],
    ) -> HistoryDecision {
        let edits: Vec<EntryEdit> = entries
            .iter()
            .map(|entry| {
                let Ok(mut data) = hookwire_plugin::serde_json::from_slice::<Value>(&entry.data)
                else {
                    return EntryEdit::Keep;
                };
                if self.redact(&mut data) == 0 {
                    return EntryEdit::Keep;
                }
                EntryEdit::Replace(data.to_string().into_bytes())
            })
            .collect();
        if edits.iter().all(|e| matches!(e, EntryEdit::Keep)) {
            return HistoryDecision::Allow;
        }
        HistoryDecision::Edit(edits)
    }
}

export!(Redact);

impl Redact {
    /// Masks every string inside `value`; returns how many matches it masked.
    fn redact(&self, value: &mut Value) -> usize {
        match value {
            Value::String(text) => {
                let mut count = 0;
                for (re, mask, first) in &self.masks {
                    if first.may_match(text) {
                        count += apply(re, *mask, text);
                    }
                }
                count
            }
            Value::Array(items) => items.iter_mut().map(|v| self.redact(v)).sum(),
            Value::Object(fields) => fields.values_mut().map(|v| self.redact(v)).sum(),
            _ => 0,
        }
    }
}

/// A pattern for `word` that does not match inside a longer word.
fn whole_word(word: &str) -> String {
    // `\b` only where the word has a word character: `c++` ends in a non-word one.
    let edge = |c: Option<char>| match c {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => r"\b",
        _ => "",
    };
    let (first, last) = (word.chars().next(), word.chars().next_back());
    format!("{}{}{}", edge(first), escape(word), edge(last))
}

fn apply(re: &Regex, mask: Mask, text: &mut String) -> usize {
    let masked = |m: &str| match mask {
        Mask::Asterisks => Some("*".repeat(m.chars().count())),
        Mask::Text(text) => Some(text.to_owned()),
        Mask::Card => luhn_valid(m).then(|| "[card]".to_owned()),
    };
    let count = re
        .find_iter(text)
        .filter(|m| masked(m.as_str()).is_some())
        .count();
    if count > 0 {
        *text = re
            .replace_all(text, |caps: &regex_lite::Captures| {
                masked(&caps[0]).unwrap_or_else(|| caps[0].to_owned())
            })
            .into_owned();
    }
    count
}

/// The Luhn checksum over the digits of `candidate` (separators skipped): from the
/// right, every second digit doubled (minus 9 past 9), the sum a multiple of 10.
fn luhn_valid(candidate: &str) -> bool {
    let mut sum = 0;
    let digits = candidate.bytes().rev().filter(u8::is_ascii_digit);
    for (i, d) in digits.enumerate() {
        let d = u32::from(d - b'0');
        sum += match i % 2 {
            0 => d,
            _ if d * 2 > 9 => d * 2 - 9,
            _ => d * 2,
        };
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(data: Value) -> (Option<Value>, Option<Value>) {
        let mut plugin = Redact::init(json!({"words": ["darn", "c++"]})).unwrap();
        let mut publication = Publication::new("chat:lobby", data).from_user("alice");
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        let redacted = publication.meta_added().get("redacted").cloned();
        (publication.data_after().cloned(), redacted)
    }

    #[test]
    fn history_stored_before_the_rule_is_masked_on_read() {
        let mut plugin = Redact::init(json!({})).unwrap();
        let entry = |offset, text: &str| HistoryEntry {
            offset,
            ts: 1,
            user: None,
            data: json!({"text": text}).to_string().into_bytes(),
            meta: "{}".into(),
        };
        let conn = Connection::new("bob");
        let clean = [entry(1, "hello")];
        assert_eq!(
            plugin.on_history(&conn, "chat:a", &clean),
            HistoryDecision::Allow
        );
        let mixed = [entry(1, "hello"), entry(2, "card 4111 1111 1111 1111")];
        let HistoryDecision::Edit(edits) = plugin.on_history(&conn, "chat:a", &mixed) else {
            panic!("the card is masked");
        };
        assert_eq!(edits[0], EntryEdit::Keep);
        let EntryEdit::Replace(data) = &edits[1] else {
            panic!("replaced: {edits:?}");
        };
        assert_eq!(
            hookwire_plugin::serde_json::from_slice::<Value>(data).unwrap(),
            json!({"text": "card [card]"})
        );
    }

    #[test]
    fn masks_every_string_and_counts() {
        let (data, count) = redact(json!({
            "text": "Darn, mail bob.smith@example.co.uk now",
            "cards": ["4111 1111 1111 1111", "4111-1111-1111-1111", "ref 123456"],
            "nested": {"deep": "I like C++ and darning"},
            "n": 4111111111111111_u64
        }));
        assert_eq!(
            data,
            Some(json!({
                "text": "****, mail [email] now",
                "cards": ["[card]", "[card]", "ref 123456"],
                "nested": {"deep": "I like *** and darning"},
                "n": 4111111111111111_u64
            }))
        );
        assert_eq!(count, Some(json!(5)));
    }

    #[test]
    fn only_numbers_that_pass_the_luhn_check_are_cards() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("5500-0000-0000-0004"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        // Ids and millisecond timestamps in text stay as they are...
        let (data, count) = redact(json!({
            "text": "order 1767225612345 at ts 1767225612346, user id 9007199254740993",
            "card": "pay with 4111 1111 1111 1111 or 4111 1111 1111 1112",
        }));
        // ...and only the valid card number is masked.
        assert_eq!(
            data,
            Some(json!({
                "text": "order 1767225612345 at ts 1767225612346, user id 9007199254740993",
                "card": "pay with [card] or 4111 1111 1111 1112",
            }))
        );
        assert_eq!(count, Some(json!(1)));
    }

    #[test]
    fn clean_data_is_not_edited() {
        assert_eq!(
            redact(json!({"text": "hello @bob, call 555-1234"})),
            (None, None)
        );
    }

    #[test]
    fn detectors_can_be_switched_off() {
        let mut plugin = Redact::init(json!({"emails": false, "cards": false})).unwrap();
        let mut publication = Publication::new("chat:lobby", json!("a@b.io 4111111111111111"));
        plugin.on_publish(&mut publication);
        assert!(publication.edits().is_empty());
    }
}
