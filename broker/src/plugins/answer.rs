//! A plugin's answers, checked and applied: a publish decision to the publication
//! (new data, meta fields, target channels, emitted publications; used whole or not at
//! all), connection metadata, refusals. No Wasm here: `runtime` makes the calls and
//! hands their answers over.

use serde_json::value::RawValue;

use super::host::{MetaField, PublicationState, PublishDecision, PublishEdit, WitRefusal};
use super::meta::{self, MetaFields};
use super::types::Error;

/// A refusal, by a plugin or by its failure under `on_error = "reject"`. The message
/// goes to the client as `rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub plugin: String,
    pub message: String,
    /// The plugin's machine-readable code, when it gave a well-formed one.
    pub code: Option<String>,
}

/// A publication a plugin asked for in addition to the one processed.
#[derive(Debug)]
pub struct Emit {
    pub channel: String,
    pub data: Box<RawValue>,
    pub meta: Option<Box<RawValue>>,
    pub plugin: String,
}

/// Longest refusal reason kept, in bytes.
const REASON_MAX: usize = 512;
/// Channels (set + added) and emitted publications one answer may name.
const MAX_TARGETS: usize = 64;

impl Refusal {
    /// A plugin's own refusal of `what` ("connection", "subscription", "publication");
    /// `reason` is clipped to [`REASON_MAX`] bytes.
    pub fn by_plugin(plugin: &str, what: &str, refusal: &WitRefusal) -> Self {
        Self {
            plugin: plugin.to_string(),
            message: format!(
                "plugin {plugin} refused the {what}: {}",
                clip(&refusal.reason)
            ),
            code: refusal_code(refusal),
        }
    }
}

/// Longest refusal code, in bytes.
const CODE_MAX: usize = 64;

/// A refusal's code, when well-formed (`[a-z0-9_]`, 1 to 64 bytes); a malformed one is
/// left out rather than passed to clients.
pub fn refusal_code(refusal: &WitRefusal) -> Option<String> {
    let code = refusal.code.as_deref()?;
    let good = !code.is_empty()
        && code.len() <= CODE_MAX
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    good.then(|| code.to_string())
}

/// What one plugin's `on-publish` answer did to the publication.
#[derive(Debug, PartialEq)]
pub enum PublishOutcome {
    /// Allowed as it was.
    Unchanged,
    /// Refused, for this reason (as the plugin gave it).
    Refused(WitRefusal),
    /// Allowed with these changes, now applied.
    Modified(Changes),
}

/// What an edit changed, for the audit trail.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub data: bool,
    pub rerouted: Option<Vec<String>>,
    pub emitted: Vec<String>,
}

/// Applies `plugin`'s answer to `publication`, adding what it emits to `emits`. An edit
/// is checked whole first (size against `max_output_bytes`, JSON, channels against
/// `valid_channel`) and applied only when all of it is good: on `Err` nothing changed.
pub fn apply_publish(
    answer: PublishDecision,
    plugin: &str,
    max_output_bytes: usize,
    publication: &mut PublicationState,
    emits: &mut Vec<Emit>,
    valid_channel: &dyn Fn(&str) -> Result<(), String>,
) -> Result<PublishOutcome, Error> {
    match answer {
        PublishDecision::Allow => Ok(PublishOutcome::Unchanged),
        PublishDecision::Refuse(reason) => Ok(PublishOutcome::Refused(reason)),
        PublishDecision::Modify(edit) => {
            check_size(&edit, max_output_bytes)?;
            let checked = check_edit(edit, plugin, publication, valid_channel)?;
            Ok(PublishOutcome::Modified(checked.apply(publication, emits)))
        }
    }
}

/// An edit that passed every check, ready to apply.
struct CheckedEdit {
    data: Option<Box<RawValue>>,
    meta: MetaFields,
    channels: Option<Vec<String>>,
    emits: Vec<Emit>,
}

fn check_size(edit: &PublishEdit, max: usize) -> Result<(), Error> {
    let size = edit.data.as_ref().map_or(0, Vec::len)
        + meta_size(&edit.add_meta)
        + edit
            .set_channels
            .iter()
            .flatten()
            .map(String::len)
            .sum::<usize>()
        + edit.add_channels.iter().map(String::len).sum::<usize>()
        + edit
            .emit
            .iter()
            .map(|e| e.channel.len() + e.data.len() + meta_size(&e.meta))
            .sum::<usize>();
    if size > max {
        return Err(Error::OutputTooLarge { bytes: size, max });
    }
    let targets = edit.set_channels.as_ref().map_or(0, Vec::len) + edit.add_channels.len();
    if targets > MAX_TARGETS || edit.emit.len() > MAX_TARGETS {
        return Err(Error::BadOutput(format!(
            "more than {MAX_TARGETS} channels or emitted publications in one answer"
        )));
    }
    Ok(())
}

fn check_edit(
    edit: PublishEdit,
    plugin: &str,
    publication: &PublicationState,
    valid_channel: &dyn Fn(&str) -> Result<(), String>,
) -> Result<CheckedEdit, Error> {
    let data = edit.data.map(json_bytes).transpose()?;
    let meta = meta_fields(edit.add_meta)?;
    if let Some(set) = &edit.set_channels
        && set.is_empty()
    {
        return Err(Error::BadOutput("set-channels is empty".into()));
    }
    // Each target once, in the order first named: a channel named twice would get the
    // publication twice.
    let channels = (edit.set_channels.is_some() || !edit.add_channels.is_empty()).then(|| {
        let mut all: Vec<String> = Vec::new();
        let set = edit
            .set_channels
            .unwrap_or_else(|| publication.channels.clone());
        for c in set.into_iter().chain(edit.add_channels) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        all
    });
    for c in channels.iter().flatten() {
        valid_channel(c).map_err(|e| Error::BadOutput(format!("channel {c:?}: {e}")))?;
    }
    let mut emits = Vec::with_capacity(edit.emit.len());
    for e in edit.emit {
        valid_channel(&e.channel)
            .map_err(|m| Error::BadOutput(format!("emitted channel {:?}: {m}", e.channel)))?;
        let fields = meta_fields(e.meta)?;
        emits.push(Emit {
            channel: e.channel,
            data: json_bytes(e.data)?,
            meta: (!fields.is_empty())
                .then(|| meta::object_text(&fields))
                .and_then(|t| RawValue::from_string(t).ok()),
            plugin: plugin.to_string(),
        });
    }
    Ok(CheckedEdit {
        data,
        meta,
        channels,
        emits,
    })
}

impl CheckedEdit {
    fn apply(self, publication: &mut PublicationState, emits: &mut Vec<Emit>) -> Changes {
        let mut changes = Changes::default();
        if let Some(data) = self.data {
            publication.data = data;
            changes.data = true;
        }
        for (k, v) in self.meta {
            publication.set_meta(k, v);
        }
        if let Some(channels) = self.channels
            && channels != publication.channels
        {
            changes.rerouted = Some(channels.clone());
            publication.channels = channels;
        }
        changes.emitted = self.emits.iter().map(|e| e.channel.clone()).collect();
        emits.extend(self.emits);
        changes
    }
}

fn meta_fields(fields: Vec<MetaField>) -> Result<MetaFields, Error> {
    fields
        .into_iter()
        .map(|f| Ok((f.key, json_text(f.value)?)))
        .collect()
}

fn meta_size(fields: &[MetaField]) -> usize {
    fields.iter().map(|f| f.key.len() + f.value.len()).sum()
}

fn json_bytes(bytes: Vec<u8>) -> Result<Box<RawValue>, Error> {
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::BadOutput("data is not UTF-8 JSON text".into()))?;
    json_text(text)
}

fn json_text(text: String) -> Result<Box<RawValue>, Error> {
    RawValue::from_string(text).map_err(|e| Error::BadOutput(format!("not JSON: {e}")))
}

/// Merges an `on-connect` answer's metadata (a JSON object, at most `max` bytes) into
/// `meta`.
pub fn merge_connect_meta(meta: &mut MetaFields, json: &str, max: usize) -> Result<(), Error> {
    if json.len() > max {
        return Err(Error::OutputTooLarge {
            bytes: json.len(),
            max,
        });
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| Error::BadOutput(format!("connection metadata is not a JSON object: {e}")))?;
    for (k, v) in map {
        let raw = serde_json::value::to_raw_value(&v).expect("a Value serializes");
        meta::set(meta, k, raw);
    }
    Ok(())
}

/// `reason` cut to at most [`REASON_MAX`] bytes (on a character boundary).
pub fn clip(reason: &str) -> &str {
    crate::protocol::truncate_utf8(reason, REASON_MAX)
}

impl From<Refusal> for crate::protocol::ErrorReply {
    fn from(r: Refusal) -> Self {
        let mut reply =
            crate::protocol::ErrorReply::new(crate::protocol::ErrorCode::Rejected, r.message);
        reply.reason_code = r.code;
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::host::{ExtraPublication, PublishSource};

    const MAX: usize = 4_096;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).unwrap()
    }

    fn publication() -> PublicationState {
        PublicationState {
            source: PublishSource::Client,
            channels: vec!["chat:room".into()],
            user: Some("alice".into()),
            data: raw(r#"{"text":"hi"}"#),
            meta: vec![("lang".into(), raw(r#""en""#))],
            connection: None,
        }
    }

    fn edit() -> PublishEdit {
        PublishEdit {
            data: None,
            add_meta: Vec::new(),
            set_channels: None,
            add_channels: Vec::new(),
            emit: Vec::new(),
        }
    }

    fn field(key: &str, value: &str) -> MetaField {
        MetaField {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Channels under `chat:` exist; others do not.
    fn valid(channel: &str) -> Result<(), String> {
        if channel.starts_with("chat:") {
            Ok(())
        } else {
            Err("no such namespace".into())
        }
    }

    /// Applies `answer` to a fresh [`publication`] with output cap `max`.
    fn run(
        answer: PublishDecision,
        max: usize,
    ) -> (Result<PublishOutcome, Error>, PublicationState, Vec<Emit>) {
        let mut state = publication();
        let mut emits = Vec::new();
        let outcome = apply_publish(answer, "mod", max, &mut state, &mut emits, &valid);
        (outcome, state, emits)
    }

    /// The publication is as [`publication`] made it.
    fn assert_unchanged(state: &PublicationState) {
        let fresh = publication();
        assert_eq!(state.data.get(), fresh.data.get());
        assert_eq!(state.channels, fresh.channels);
        assert_eq!(state.meta_json().unwrap().get(), r#"{"lang":"en"}"#);
    }

    #[test]
    fn allow_changes_nothing() {
        let (outcome, state, emits) = run(PublishDecision::Allow, MAX);
        assert_eq!(outcome.unwrap(), PublishOutcome::Unchanged);
        assert_unchanged(&state);
        assert!(emits.is_empty());
    }

    #[test]
    fn an_empty_edit_changes_nothing() {
        let (outcome, state, emits) = run(PublishDecision::Modify(edit()), MAX);
        assert_eq!(
            outcome.unwrap(),
            PublishOutcome::Modified(Changes::default())
        );
        assert_unchanged(&state);
        assert!(emits.is_empty());
    }

    #[test]
    fn new_data_replaces_the_payload() {
        let answer = PublishDecision::Modify(PublishEdit {
            data: Some(br#"{"text":"***"}"#.to_vec()),
            ..edit()
        });
        let (outcome, state, _) = run(answer, MAX);
        let changes = match outcome.unwrap() {
            PublishOutcome::Modified(c) => c,
            other => panic!("{other:?}"),
        };
        assert!(changes.data);
        assert_eq!(state.data.get(), r#"{"text":"***"}"#);
    }

    #[test]
    fn meta_fields_are_added_or_overwritten_in_place() {
        let answer = PublishDecision::Modify(PublishEdit {
            add_meta: vec![field("score", "0.9"), field("lang", r#""fr""#)],
            ..edit()
        });
        let (outcome, state, _) = run(answer, MAX);
        assert_eq!(
            outcome.unwrap(),
            PublishOutcome::Modified(Changes::default())
        );
        assert_eq!(
            state.meta_json().unwrap().get(),
            r#"{"lang":"fr","score":0.9}"#
        );
    }

    /// The answer reroutes the publication to exactly `channels`, and says so.
    fn assert_rerouted(answer: PublishDecision, channels: &[&str]) {
        let (outcome, state, _) = run(answer, MAX);
        let rerouted: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            outcome.unwrap(),
            PublishOutcome::Modified(Changes {
                rerouted: Some(rerouted.clone()),
                ..Changes::default()
            })
        );
        assert_eq!(state.channels, rerouted);
    }

    #[test]
    fn channels_are_replaced_or_added_once_each() {
        let answer = PublishDecision::Modify(PublishEdit {
            set_channels: Some(vec!["chat:a".into()]),
            add_channels: vec!["chat:b".into(), "chat:a".into()],
            ..edit()
        });
        assert_rerouted(answer, &["chat:a", "chat:b"]);

        let answer = PublishDecision::Modify(PublishEdit {
            add_channels: vec!["chat:room".into(), "chat:log".into()],
            ..edit()
        });
        let (_, state, _) = run(answer, MAX);
        assert_eq!(state.channels, ["chat:room", "chat:log"]);
    }

    #[test]
    fn a_channel_named_twice_in_set_channels_is_a_target_once() {
        // Found by the `plugin_answer` fuzz target (fuzz/corpus/plugin_answer/reroute_duplicate).
        let answer = PublishDecision::Modify(PublishEdit {
            set_channels: Some(vec!["chat:a".into(), "chat:b".into(), "chat:a".into()]),
            ..edit()
        });
        assert_rerouted(answer, &["chat:a", "chat:b"]);
    }

    #[test]
    fn emitted_publications_are_collected_with_their_meta() {
        let answer = PublishDecision::Modify(PublishEdit {
            emit: vec![
                ExtraPublication {
                    channel: "chat:audit".into(),
                    data: b"[1,2]".to_vec(),
                    meta: vec![field("by", r#""mod""#)],
                },
                ExtraPublication {
                    channel: "chat:count".into(),
                    data: b"3".to_vec(),
                    meta: Vec::new(),
                },
            ],
            ..edit()
        });
        let (outcome, state, emits) = run(answer, MAX);
        assert_eq!(
            outcome.unwrap(),
            PublishOutcome::Modified(Changes {
                emitted: vec!["chat:audit".into(), "chat:count".into()],
                ..Changes::default()
            })
        );
        assert_unchanged(&state);
        let seen: Vec<_> = emits
            .iter()
            .map(|e| {
                (
                    e.channel.as_str(),
                    e.data.get(),
                    e.meta.as_ref().map(|m| m.get()),
                    e.plugin.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("chat:audit", "[1,2]", Some(r#"{"by":"mod"}"#), "mod"),
                ("chat:count", "3", None, "mod"),
            ]
        );
    }

    #[test]
    fn an_answer_over_max_output_bytes_changes_nothing() {
        let answer = PublishDecision::Modify(PublishEdit {
            data: Some(vec![b'1'; 100]),
            add_meta: vec![field("k", "true")],
            ..edit()
        });
        let (outcome, state, emits) = run(answer, 64);
        match outcome {
            Err(Error::OutputTooLarge {
                bytes: 105,
                max: 64,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(Error::OutputTooLarge { bytes: 1, max: 0 }.kind(), "output");
        assert_unchanged(&state);
        assert!(emits.is_empty());
    }

    #[test]
    fn a_bad_part_refuses_the_whole_answer() {
        let bad_answers = [
            (
                PublishEdit {
                    data: Some(b"[1,2]".to_vec()),
                    set_channels: Some(Vec::new()),
                    ..edit()
                },
                "set-channels is empty",
            ),
            (
                PublishEdit {
                    data: Some(b"{not json".to_vec()),
                    ..edit()
                },
                "not JSON",
            ),
            (
                PublishEdit {
                    data: Some(vec![0xff, 0xfe]),
                    ..edit()
                },
                "not UTF-8",
            ),
            (
                PublishEdit {
                    add_meta: vec![field("k", "nope")],
                    ..edit()
                },
                "not JSON",
            ),
            (
                PublishEdit {
                    data: Some(b"1".to_vec()),
                    add_channels: vec!["news:x".into()],
                    ..edit()
                },
                "channel \"news:x\": no such namespace",
            ),
            (
                PublishEdit {
                    emit: vec![ExtraPublication {
                        channel: "news:y".into(),
                        data: b"1".to_vec(),
                        meta: Vec::new(),
                    }],
                    ..edit()
                },
                "emitted channel \"news:y\"",
            ),
            (
                PublishEdit {
                    add_channels: (0..=MAX_TARGETS).map(|i| format!("chat:{i}")).collect(),
                    ..edit()
                },
                "more than 64 channels",
            ),
        ];
        for (bad, why) in bad_answers {
            let (outcome, state, emits) = run(PublishDecision::Modify(bad), MAX);
            match outcome {
                Err(Error::BadOutput(message)) => assert!(message.contains(why), "{message}"),
                other => panic!("{why}: {other:?}"),
            }
            assert_unchanged(&state);
            assert!(emits.is_empty());
        }
    }

    #[test]
    fn a_refusal_keeps_its_reason_clipped_in_the_message() {
        let (outcome, state, _) = run(PublishDecision::Refuse("spam".into()), MAX);
        assert_eq!(outcome.unwrap(), PublishOutcome::Refused("spam".into()));
        assert_unchanged(&state);
        let refusal = Refusal::by_plugin("mod", "publication", &"spam".into());
        assert_eq!(refusal.plugin, "mod");
        assert_eq!(refusal.message, "plugin mod refused the publication: spam");
        let long = "é".repeat(REASON_MAX);
        let refusal = Refusal::by_plugin("mod", "publication", &long.as_str().into());
        let reason = refusal.message.rsplit(": ").next().unwrap();
        assert_eq!(reason.len(), REASON_MAX);
        assert!(long.starts_with(reason));
    }

    #[test]
    fn connection_meta_merges_an_object_within_the_cap() {
        let mut meta = MetaFields::new();
        merge_connect_meta(&mut meta, r#"{"name":"Alice","n":1}"#, MAX).unwrap();
        merge_connect_meta(&mut meta, r#"{"n":2}"#, MAX).unwrap();
        assert_eq!(meta::object_text(&meta), r#"{"n":2,"name":"Alice"}"#);
        assert!(matches!(
            merge_connect_meta(&mut meta, "[1]", MAX),
            Err(Error::BadOutput(_))
        ));
        assert!(matches!(
            merge_connect_meta(&mut meta, r#"{"big":"xxxxxxxx"}"#, 8),
            Err(Error::OutputTooLarge { bytes: 18, max: 8 })
        ));
        assert_eq!(meta::object_text(&meta), r#"{"n":2,"name":"Alice"}"#);
    }
}
