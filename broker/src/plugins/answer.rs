//! A plugin's answers, checked and applied: a publish decision to the publication
//! (new data, meta fields, target channels, emitted publications; used whole or not at
//! all), connection metadata, refusals. No Wasm here: `runtime` makes the calls and
//! hands their answers over.

use serde_json::value::RawValue;

use super::host::{MetaField, PublicationState, PublishDecision, PublishEdit};
use super::meta::{self, MetaFields};
use super::types::Error;

/// A refusal, by a plugin or by its failure under `on_error = "reject"`. The message
/// goes to the client as `rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub plugin: String,
    pub message: String,
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
    pub fn by_plugin(plugin: &str, what: &str, reason: &str) -> Self {
        Self {
            plugin: plugin.to_string(),
            message: format!("plugin {plugin} refused the {what}: {}", clip(reason)),
        }
    }
}

/// What one plugin's `on-publish` answer did to the publication.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Allowed as it was.
    Unchanged,
    /// Refused, for this reason (as the plugin gave it).
    Refused(String),
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
    let mut channels = edit.set_channels;
    if let Some(set) = &channels
        && set.is_empty()
    {
        return Err(Error::BadOutput("set-channels is empty".into()));
    }
    if !edit.add_channels.is_empty() {
        let mut all = channels.unwrap_or_else(|| publication.channels.clone());
        for c in edit.add_channels {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        channels = Some(all);
    }
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
    if reason.len() <= REASON_MAX {
        return reason;
    }
    let mut end = REASON_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl From<Refusal> for crate::protocol::ErrorReply {
    fn from(r: Refusal) -> Self {
        crate::protocol::ErrorReply::new(crate::protocol::ErrorCode::Rejected, r.message)
    }
}
