//! The chains of the hooks 0.2.0 added: `unsubscribe` and `history` (a namespace's
//! chain) and `refresh` (the connection plugins). Like the others, each event takes
//! one snapshot of the loaded set and a canary's share goes to the canary; shadows are
//! not run for these hooks.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::answer::{self, Refusal};
use super::host::{EntryEdit, HistoryDecision, HistoryEntry, PluginConn, RefreshDecision};
use super::meta::{self, MetaFields};
use super::rollout::EventKey;
use super::runtime::{Plugins, Subject};
use super::types::{Error, Hook};
use crate::protocol::{self, EncodedFrame, PublicationFields};

/// A stored `message` frame, read back for `on-history`.
#[derive(Deserialize)]
struct Stored<'a> {
    offset: u64,
    ts: u64,
    #[serde(default, borrow)]
    user: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    meta: Option<&'a RawValue>,
}

fn subject<'a>(channel: Option<&'a str>, conn: &'a PluginConn) -> Subject<'a> {
    Subject {
        channel,
        user: Some(&conn.user),
        client: Some(&conn.client),
    }
}

impl Plugins {
    /// Runs the unsubscribe chain of `namespace` (notification only; failures are
    /// counted and logged).
    pub fn on_unsubscribe(&self, namespace: &str, conn: &PluginConn, channel: &str, reason: &str) {
        let set = self.set();
        let key = EventKey {
            connection: Some(&conn.client),
            channel: Some(channel),
        };
        let wit = conn.to_wit();
        for live in set
            .chain(namespace)
            .iter()
            .filter(|p| p.has(Hook::Unsubscribe))
        {
            let p = set.pick(live, key);
            if !p.has(Hook::Unsubscribe) {
                continue;
            }
            if let Err(e) = self.call(p, Hook::Unsubscribe, |w| {
                w.bindings
                    .on_unsubscribe(&mut w.store, &wit, channel, reason)
            }) {
                let subject = subject(Some(channel), conn);
                let _ = self.failed(p, Hook::Unsubscribe, &subject, e, "unsubscribe");
            }
        }
    }

    /// Runs the refresh chain over a verified token's `claims` (JSON object text).
    /// `Ok(Some(meta))`: a plugin replaced metadata, and this is the connection's new
    /// `meta`; `Ok(None)`: unchanged.
    pub fn on_refresh(&self, conn: &PluginConn, claims: &str) -> Result<Option<Arc<str>>, Refusal> {
        let set = self.set();
        let key = EventKey {
            connection: Some(&conn.client),
            channel: None,
        };
        let wit = conn.to_wit();
        let subject = subject(None, conn);
        let mut meta: Option<MetaFields> = None;
        for live in set.connection.iter().filter(|p| p.has(Hook::Refresh)) {
            let p = set.pick(live, key);
            if !p.has(Hook::Refresh) {
                continue;
            }
            let answer = self.call(p, Hook::Refresh, |w| {
                w.bindings.on_refresh(&mut w.store, &wit, claims)
            });
            match answer {
                Ok(RefreshDecision::Allow) => {}
                Ok(RefreshDecision::ReplaceMeta(json)) => {
                    let fields = meta.get_or_insert_with(|| {
                        let mut now = MetaFields::new();
                        let _ = answer::merge_connect_meta(&mut now, &conn.meta, usize::MAX);
                        now
                    });
                    let max = p.settings.limits.max_output_bytes;
                    if let Err(e) = answer::merge_connect_meta(fields, &json, max) {
                        self.failed(p, Hook::Refresh, &subject, e, "token refresh")?;
                    }
                }
                Ok(RefreshDecision::Refuse(refusal)) => {
                    return Err(self.refused(
                        p,
                        Hook::Refresh,
                        &subject,
                        &refusal,
                        "token refresh",
                    ));
                }
                Err(e) => self.failed(p, Hook::Refresh, &subject, e, "token refresh")?,
            }
        }
        Ok(meta.map(|m| meta::object_text(&m).into()))
    }

    /// Runs the history chain of `namespace` over what `conn` is about to read of
    /// `channel` (stored `message` frames): returns the frames to send, each kept,
    /// rewritten (encoded anew) or left out.
    pub fn on_history(
        &self,
        namespace: &str,
        conn: &PluginConn,
        channel: &str,
        frames: Vec<EncodedFrame>,
    ) -> Result<Vec<EncodedFrame>, Refusal> {
        let set = self.set();
        let key = EventKey {
            connection: Some(&conn.client),
            channel: Some(channel),
        };
        let wit = conn.to_wit();
        let subject = subject(Some(channel), conn);
        // Each entry with the frame to send for it (`None`: encode the entry anew).
        let mut entries: Vec<(HistoryEntry, Option<EncodedFrame>)> =
            frames.into_iter().filter_map(entry_of).collect();
        for live in set.chain(namespace).iter().filter(|p| p.has(Hook::History)) {
            let p = set.pick(live, key);
            if !p.has(Hook::History) || entries.is_empty() {
                continue;
            }
            let shown: Vec<HistoryEntry> = entries.iter().map(|(e, _)| e.clone()).collect();
            let answer = self.call(p, Hook::History, |w| {
                w.bindings.on_history(&mut w.store, &wit, channel, &shown)
            });
            let max = p.settings.limits.max_output_bytes;
            match answer.and_then(|a| checked(a, max)) {
                Ok(HistoryDecision::Allow) => {}
                Ok(HistoryDecision::Edit(edits)) => apply(&mut entries, edits),
                Ok(HistoryDecision::Refuse(refusal)) => {
                    return Err(self.refused(p, Hook::History, &subject, &refusal, "history read"));
                }
                Err(e) => self.failed(p, Hook::History, &subject, e, "history read")?,
            }
        }
        Ok(entries
            .into_iter()
            .map(|(entry, frame)| frame.unwrap_or_else(|| encode(channel, &entry)))
            .collect())
    }
}

fn entry_of(frame: EncodedFrame) -> Option<(HistoryEntry, Option<EncodedFrame>)> {
    let stored: Stored<'_> = serde_json::from_str(frame.as_str()).ok()?;
    let entry = HistoryEntry {
        offset: stored.offset,
        ts: stored.ts,
        user: stored.user.map(str::to_string),
        data: stored.data.get().as_bytes().to_vec(),
        meta: stored
            .meta
            .map_or_else(|| "{}".to_string(), |m| m.get().to_string()),
    };
    Some((entry, Some(frame)))
}

/// An edit's replacement payloads must be JSON and within the output cap.
fn checked(answer: HistoryDecision, max: usize) -> Result<HistoryDecision, Error> {
    if let HistoryDecision::Edit(edits) = &answer {
        let mut bytes = 0;
        for edit in edits {
            if let EntryEdit::Replace(data) = edit {
                bytes += data.len();
                serde_json::from_slice::<&RawValue>(data).map_err(|e| {
                    Error::BadOutput(format!("a replaced history payload is not JSON: {e}"))
                })?;
            }
        }
        if bytes > max {
            return Err(Error::OutputTooLarge { bytes, max });
        }
    }
    Ok(answer)
}

fn apply(entries: &mut Vec<(HistoryEntry, Option<EncodedFrame>)>, edits: Vec<EntryEdit>) {
    let mut edits = edits.into_iter();
    entries.retain_mut(|(entry, frame)| match edits.next() {
        None | Some(EntryEdit::Keep) => true,
        Some(EntryEdit::Drop) => false,
        Some(EntryEdit::Replace(data)) => {
            entry.data = data;
            *frame = None;
            true
        }
    });
}

fn encode(channel: &str, entry: &HistoryEntry) -> EncodedFrame {
    let data = std::str::from_utf8(&entry.data)
        .ok()
        .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
    let meta = serde_json::from_str::<&RawValue>(&entry.meta)
        .ok()
        .filter(|m| m.get() != "{}");
    protocol::encode_message(&PublicationFields {
        channel,
        offset: entry.offset,
        ts: entry.ts,
        user: entry.user.as_deref(),
        data: data.unwrap_or(RawValue::NULL),
        meta,
    })
}
