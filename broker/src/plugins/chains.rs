//! The chains of the hooks 0.2.0 added: `unsubscribe` and `history` (a namespace's
//! chain) and `refresh` (the connection plugins). Like the others, each event takes
//! one snapshot of the loaded set and a canary's share goes to the canary. A shadow is
//! compared on `refresh` and `history` (decisions); not on `unsubscribe`, a notification
//! with nothing to compare, where running it would only repeat its side effects.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::answer::{self, Refusal};
use super::host::{EntryEdit, HistoryDecision, HistoryEntry, PluginConn, RefreshDecision};
use super::meta::{self, MetaFields};
use super::rollout::{Compared, EventKey};
use super::runtime::{Plugins, Subject};
use super::set::LoadedPlugin;
use super::shadow::{judge_history, judge_refresh};
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
            let event = Compared {
                hook: Hook::Refresh,
                channel: None,
                user: Some(&conn.user),
            };
            let refresh = |p: &LoadedPlugin| {
                self.call(p, Hook::Refresh, |w| {
                    w.bindings.on_refresh(&mut w.store, &wit, claims)
                })
            };
            let answer = self.answer_beside_shadow(
                set.shadow_of(live),
                p,
                &event,
                RefreshDecision::Allow,
                refresh,
                judge_refresh,
            );
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
        let mut slots: Vec<Slot> = frames.into_iter().map(Slot::of).collect();
        for live in set.chain(namespace).iter().filter(|p| p.has(Hook::History)) {
            let p = set.pick(live, key);
            if slots.is_empty() {
                break;
            }
            let shown: Vec<HistoryEntry> = slots.iter().filter_map(Slot::entry).cloned().collect();
            let event = Compared {
                hook: Hook::History,
                channel: Some(channel),
                user: Some(&conn.user),
            };
            let history = |p: &LoadedPlugin| {
                self.call(p, Hook::History, |w| {
                    w.bindings.on_history(&mut w.store, &wit, channel, &shown)
                })
            };
            let answer = self.answer_beside_shadow(
                set.shadow_of(live),
                p,
                &event,
                HistoryDecision::Allow,
                history,
                judge_history,
            );
            let max = p.settings.limits.max_output_bytes;
            match answer.and_then(|a| checked(a, max)) {
                Ok(HistoryDecision::Allow) => {}
                Ok(HistoryDecision::Edit(edits)) => apply(&mut slots, edits),
                Ok(HistoryDecision::Refuse(refusal)) => {
                    return Err(self.refused(p, Hook::History, &subject, &refusal, "history read"));
                }
                Err(e) => self.failed(p, Hook::History, &subject, e, "history read")?,
            }
        }
        Ok(slots.into_iter().map(|s| s.frame(channel)).collect())
    }
}

/// One publication of the read.
enum Slot {
    /// A stored frame that does not read back as a publication (never expected): it
    /// goes to the client as stored, unseen by plugins, so nothing stored is lost.
    Unread(EncodedFrame),
    /// The entry plugins see, and the frame to send for it (`None` once a plugin
    /// rewrote it: encoded anew).
    Read {
        entry: HistoryEntry,
        frame: Option<EncodedFrame>,
    },
}

impl Slot {
    fn of(frame: EncodedFrame) -> Self {
        let stored = match serde_json::from_str::<Stored<'_>>(frame.as_str()) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "A stored publication does not read back; sent as stored");
                return Self::Unread(frame);
            }
        };
        let entry = HistoryEntry {
            offset: stored.offset,
            ts: stored.ts,
            user: stored.user.map(str::to_string),
            data: stored.data.get().as_bytes().to_vec(),
            meta: stored
                .meta
                .map_or_else(|| "{}".to_string(), |m| m.get().to_string()),
        };
        Self::Read {
            entry,
            frame: Some(frame),
        }
    }

    fn entry(&self) -> Option<&HistoryEntry> {
        match self {
            Self::Read { entry, .. } => Some(entry),
            Self::Unread(_) => None,
        }
    }

    fn frame(self, channel: &str) -> EncodedFrame {
        match self {
            Self::Unread(frame)
            | Self::Read {
                frame: Some(frame), ..
            } => frame,
            Self::Read { entry, frame: None } => encode(channel, &entry),
        }
    }
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

/// One edit per entry the plugin was shown, in order (slots it was not shown keep).
fn apply(slots: &mut Vec<Slot>, edits: Vec<EntryEdit>) {
    let mut edits = edits.into_iter();
    slots.retain_mut(|slot| {
        let Slot::Read { entry, frame } = slot else {
            return true;
        };
        match edits.next() {
            None | Some(EntryEdit::Keep) => true,
            Some(EntryEdit::Drop) => false,
            Some(EntryEdit::Replace(data)) => {
                entry.data = data;
                *frame = None;
                true
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(offset: u64, text: &str) -> EncodedFrame {
        let data = serde_json::value::to_raw_value(&serde_json::json!({ "text": text })).unwrap();
        protocol::encode_message(&PublicationFields {
            channel: "chat:a",
            offset,
            ts: 1,
            user: Some("alice"),
            data: &data,
            meta: None,
        })
    }

    #[test]
    fn edits_go_to_the_entries_shown_and_an_unreadable_frame_passes_as_stored() {
        let odd = EncodedFrame::from_json("{\"type\":\"message\"}".into());
        let mut slots: Vec<Slot> = [stored(1, "a"), odd.clone(), stored(2, "b")]
            .into_iter()
            .map(Slot::of)
            .collect();
        let shown: Vec<u64> = slots
            .iter()
            .filter_map(Slot::entry)
            .map(|e| e.offset)
            .collect();
        assert_eq!(shown, [1, 2]);
        apply(
            &mut slots,
            vec![EntryEdit::Drop, EntryEdit::Replace(br#""x""#.to_vec())],
        );
        let frames: Vec<EncodedFrame> = slots.into_iter().map(|s| s.frame("chat:a")).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], odd);
        let rewritten: serde_json::Value = serde_json::from_str(frames[1].as_str()).unwrap();
        assert_eq!(rewritten["data"], "x");
        assert_eq!(rewritten["offset"], 2);
        assert_eq!(rewritten["user"], "alice");
    }
}
