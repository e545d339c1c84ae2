//! Running the chains: each plugin in order sees the previous one's changes; the first
//! refusal wins; a failing plugin follows its `on_error` policy.

use std::time::Instant;

use serde_json::value::RawValue;

use super::audit::Record;
use super::host::{
    ConnectDecision, Decision, MetaField, PublicationState, PublishDecision, PublishEdit,
    publication_handle,
};
use super::{Error, Hook, LoadedPlugin, PluginConn, Plugins};
use crate::config::OnError;
use crate::protocol::now_ms;

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

/// Who an event is about, for the audit trail.
struct Subject<'a> {
    channel: Option<&'a str>,
    user: Option<&'a str>,
    client: Option<&'a str>,
}

impl Plugins {
    /// Runs the connect chain; merges accepted metadata into `conn.meta`.
    pub fn on_connect(&self, conn: &mut PluginConn) -> Result<(), Refusal> {
        let set = self.set();
        let mut meta: Vec<(String, Box<RawValue>)> = Vec::new();
        for p in set.connection.iter().filter(|p| p.has(Hook::Connect)) {
            let wit = conn.to_wit();
            let answer = self.call(p, Hook::Connect, |w| {
                w.bindings
                    .hookwire_plugin_hooks()
                    .call_on_connect(&mut w.store, &wit)
            });
            let subject = Subject {
                channel: None,
                user: Some(&conn.user),
                client: Some(&conn.client),
            };
            match answer {
                Ok(ConnectDecision::Accept) => {}
                Ok(ConnectDecision::AcceptWithMeta(json)) => {
                    match parse_object(&json, p.settings.limits.max_output_bytes) {
                        Ok(fields) => {
                            for (k, v) in fields {
                                set_field(&mut meta, k, v);
                            }
                            conn.meta = object_text(&meta).into();
                        }
                        Err(e) => self.failed(p, Hook::Connect, &subject, e, "connection")?,
                    }
                }
                Ok(ConnectDecision::Refuse(reason)) => {
                    return Err(self.refused(p, Hook::Connect, &subject, &reason, "connection"));
                }
                Err(e) => self.failed(p, Hook::Connect, &subject, e, "connection")?,
            }
        }
        Ok(())
    }

    /// Runs the subscribe chain of `namespace`.
    pub fn on_subscribe(
        &self,
        namespace: &str,
        conn: &PluginConn,
        channel: &str,
    ) -> Result<(), Refusal> {
        let set = self.set();
        let subject = Subject {
            channel: Some(channel),
            user: Some(&conn.user),
            client: Some(&conn.client),
        };
        for p in set
            .chain(namespace)
            .iter()
            .filter(|p| p.has(Hook::Subscribe))
        {
            let wit = conn.to_wit();
            let answer = self.call(p, Hook::Subscribe, |w| {
                w.bindings
                    .hookwire_plugin_hooks()
                    .call_on_subscribe(&mut w.store, &wit, channel)
            });
            match answer {
                Ok(Decision::Allow) => {}
                Ok(Decision::Refuse(reason)) => {
                    return Err(self.refused(
                        p,
                        Hook::Subscribe,
                        &subject,
                        &reason,
                        "subscription",
                    ));
                }
                Err(e) => self.failed(p, Hook::Subscribe, &subject, e, "subscription")?,
            }
        }
        Ok(())
    }

    /// Runs the publish chain of `namespace` over `publication`; `valid_channel` says
    /// whether a channel a plugin routes to exists. Returns the extra publications.
    pub fn on_publish(
        &self,
        namespace: &str,
        publication: PublicationState,
        valid_channel: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(PublicationState, Vec<Emit>), Refusal> {
        let set = self.set();
        let mut emits = Vec::new();
        // Moved into the instance's store for each call and back out after it.
        let mut slot = Some(publication);
        let publication = &mut slot;
        let current = publication.as_ref().expect("present between calls");
        let original = current.channels.first().cloned();
        let user = current.user.clone();
        let client = current.connection.as_ref().map(|c| c.client.clone());
        let subject = Subject {
            channel: original.as_deref(),
            user: user.as_deref(),
            client: client.as_deref(),
        };
        for p in set.chain(namespace).iter().filter(|p| p.has(Hook::Publish)) {
            let answer = self.call(p, Hook::Publish, |w| {
                w.store.data_mut().publication = publication.take();
                let answer = w
                    .bindings
                    .hookwire_plugin_hooks()
                    .call_on_publish(&mut w.store, publication_handle());
                *publication = w.store.data_mut().publication.take();
                answer
            });
            let Some(current) = publication.as_mut() else {
                unreachable!("the publication comes back from the store, whatever the call did")
            };
            let outcome = match answer {
                Ok(PublishDecision::Allow) => Ok(()),
                Ok(PublishDecision::Refuse(reason)) => {
                    return Err(self.refused(p, Hook::Publish, &subject, &reason, "publication"));
                }
                Ok(PublishDecision::Modify(edit)) => {
                    apply(p, edit, current, &mut emits, valid_channel)
                        .map(|changes| self.audit_changes(p, &subject, &changes))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.failed(p, Hook::Publish, &subject, e, "publication")?;
            }
        }
        let publication = slot.expect("present after the chain");
        Ok((publication, emits))
    }

    /// Runs the disconnect chain (notification only; failures are counted and logged).
    pub fn on_disconnect(&self, conn: &PluginConn, reason: &str) {
        let set = self.set();
        for p in set.connection.iter().filter(|p| p.has(Hook::Disconnect)) {
            let wit = conn.to_wit();
            if let Err(e) = self.call(p, Hook::Disconnect, |w| {
                w.bindings
                    .hookwire_plugin_hooks()
                    .call_on_disconnect(&mut w.store, &wit, reason)
            }) {
                let subject = Subject {
                    channel: None,
                    user: Some(&conn.user),
                    client: Some(&conn.client),
                };
                let _ = self.failed(p, Hook::Disconnect, &subject, e, "disconnect");
            }
        }
    }

    /// One timed, counted call.
    fn call<R>(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        f: impl FnOnce(&mut super::instance::Warm) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let start = Instant::now();
        let result = p.pool.call(f);
        let took = start.elapsed();
        p.stats.record(took);
        p.calls[hook.index()].inc();
        p.seconds[hook.index()].observe(took.as_secs_f64());
        result
    }

    fn refused(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        reason: &str,
        what: &str,
    ) -> Refusal {
        let reason = clip(reason);
        self.audit(p, hook, subject, "refused", reason);
        Refusal {
            plugin: p.id.name.clone(),
            message: format!("plugin {} refused the {what}: {reason}", p.id.name),
        }
    }

    /// Counts and logs a failure; under `reject` it becomes a refusal.
    fn failed(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        e: Error,
        what: &str,
    ) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering::Relaxed;
        p.stats.errors.fetch_add(1, Relaxed);
        if matches!(e, Error::Timeout { .. }) {
            p.stats.timeouts.fetch_add(1, Relaxed);
        }
        self.metrics.plugin_error(&p.id.name, e.kind());
        tracing::warn!(
            plugin = %p.id.name, version = %p.id.version, hook = hook.label(),
            kind = e.kind(), error = %e, on_error = ?p.settings.on_error,
            "Plugin call failed; its instance is replaced"
        );
        let reason = format!("plugin {} failed: it {e}", p.id.name);
        match p.settings.on_error {
            OnError::Allow => {
                self.audit(p, hook, subject, "failed-allowed", &reason);
                Ok(())
            }
            OnError::Reject => {
                self.audit(p, hook, subject, "failed-refused", &reason);
                Err(Refusal {
                    plugin: p.id.name.clone(),
                    message: format!(
                        "the {what} was refused because {reason} (its on_error policy is reject)"
                    ),
                })
            }
        }
    }

    fn audit_changes(&self, p: &LoadedPlugin, subject: &Subject<'_>, changes: &Changes) {
        if changes.data {
            self.audit(p, Hook::Publish, subject, "modified", "replaced data");
        }
        if let Some(channels) = &changes.rerouted {
            self.audit(
                p,
                Hook::Publish,
                subject,
                "rerouted",
                &format!("channels now {}", channels.join(", ")),
            );
        }
        for channel in &changes.emitted {
            self.audit(
                p,
                Hook::Publish,
                subject,
                "emitted",
                &format!("emitted a publication to {channel}"),
            );
        }
    }

    fn audit(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        subject: &Subject<'_>,
        decision: &'static str,
        reason: &str,
    ) {
        self.audit.record(&Record {
            time: now_ms(),
            plugin: &p.id.name,
            version: &p.id.version,
            sha256: &p.id.sha256,
            hook: hook.label(),
            channel: subject.channel,
            user: subject.user,
            client: subject.client,
            decision,
            reason,
        });
    }
}

/// What an edit changed, for the audit trail.
#[derive(Default)]
struct Changes {
    data: bool,
    rerouted: Option<Vec<String>>,
    emitted: Vec<String>,
}

/// Applies a `publish-edit` after checking all of it: an answer is used whole or not
/// at all.
fn apply(
    p: &LoadedPlugin,
    edit: PublishEdit,
    publication: &mut PublicationState,
    emits: &mut Vec<Emit>,
    valid_channel: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Changes, Error> {
    let max = p.settings.limits.max_output_bytes;
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
    let data = edit.data.map(json_bytes).transpose()?;
    let meta = edit
        .add_meta
        .into_iter()
        .map(|f| Ok((f.key, json_text(f.value)?)))
        .collect::<Result<Vec<_>, Error>>()?;
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
    let mut new_emits = Vec::with_capacity(edit.emit.len());
    for e in edit.emit {
        valid_channel(&e.channel)
            .map_err(|m| Error::BadOutput(format!("emitted channel {:?}: {m}", e.channel)))?;
        let fields = e
            .meta
            .into_iter()
            .map(|f| Ok((f.key, json_text(f.value)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        new_emits.push(Emit {
            channel: e.channel,
            data: json_bytes(e.data)?,
            meta: (!fields.is_empty())
                .then(|| object_text(&fields))
                .and_then(|t| RawValue::from_string(t).ok()),
            plugin: p.id.name.clone(),
        });
    }
    // Everything checked: apply.
    let mut changes = Changes::default();
    if let Some(data) = data {
        publication.data = data;
        changes.data = true;
    }
    for (k, v) in meta {
        publication.set_meta(k, v);
    }
    if let Some(channels) = channels
        && channels != publication.channels
    {
        changes.rerouted = Some(channels.clone());
        publication.channels = channels;
    }
    changes.emitted = new_emits.iter().map(|e| e.channel.clone()).collect();
    emits.extend(new_emits);
    Ok(changes)
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

fn parse_object(json: &str, max: usize) -> Result<Vec<(String, Box<RawValue>)>, Error> {
    if json.len() > max {
        return Err(Error::OutputTooLarge {
            bytes: json.len(),
            max,
        });
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| Error::BadOutput(format!("connection metadata is not a JSON object: {e}")))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let raw = serde_json::value::to_raw_value(&v).expect("a Value serializes");
            (k, raw)
        })
        .collect())
}

fn set_field(fields: &mut Vec<(String, Box<RawValue>)>, key: String, value: Box<RawValue>) {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => fields.push((key, value)),
    }
}

/// A JSON object from fields (keys escaped, values already JSON).
pub(super) fn object_text(fields: &[(String, Box<RawValue>)]) -> String {
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

fn clip(reason: &str) -> &str {
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
