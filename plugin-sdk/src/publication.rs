use std::cell::{Cell, OnceCell};

use serde_json::{Map, Value};

use crate::bindings::hookwire::plugin::types::{
    self as wit, ExtraPublication, MetaField, PublishDecision, PublishEdit,
};
use crate::{Connection, Decision, PublishSource};

/// A publication being processed by [`Plugin::on_publish`](crate::Plugin::on_publish).
///
/// Reading: each accessor asks the broker once, on first use, and keeps the answer;
/// a plugin that never calls [`data`](Self::data) or
/// [`data_bytes`](Self::data_bytes) never copies the payload into the plugin.
/// Readers show the publication as it came to this hook, before its own edits.
///
/// Writing: `set_data`, `add_meta`, `set_channels`, `add_channel` and `emit`
/// collect [`Edits`], which go back to the broker when the hook allows (and are
/// dropped when it refuses). A hook that edits nothing answers a plain allow.
///
/// In tests, build one with [`Publication::new`] and read the edits back with
/// [`edits`](Self::edits) and its shortcuts.
#[derive(Debug)]
pub struct Publication<'h> {
    /// The broker's publication; `None` for one built by [`Publication::new`],
    /// whose fields are all filled in up front.
    host: Option<&'h wit::Publication>,
    source: OnceCell<PublishSource>,
    channels: OnceCell<Vec<String>>,
    user: OnceCell<Option<String>>,
    connection: OnceCell<Option<Connection>>,
    meta: OnceCell<Value>,
    data_bytes: OnceCell<Vec<u8>>,
    data: OnceCell<Value>,
    payload_read: Cell<bool>,
    edits: Edits,
}

/// The changes a hook made to a [`Publication`]; empty fields change nothing.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Edits {
    /// The new payload.
    pub data: Option<Value>,
    /// `meta` fields to add or overwrite.
    pub meta: Map<String, Value>,
    /// The new set of target channels.
    pub channels: Option<Vec<String>>,
    /// Target channels to add.
    pub added_channels: Vec<String>,
    /// Extra publications to emit.
    pub emitted: Vec<Emitted>,
}

/// An extra publication made with [`Publication::emit`]. The broker routes it like
/// any publication, without running `on_publish` hooks on it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Emitted {
    pub channel: String,
    pub data: Value,
    pub meta: Map<String, Value>,
}

impl Publication<'static> {
    /// A publication of `data` to `channel` from the server API (no user, no
    /// connection, `meta` `{}`), for tests; the `from_*` and `with_*` methods
    /// change it.
    ///
    /// ```
    /// use hookwire_plugin::{Connection, Publication, PublishSource, json};
    ///
    /// let p = Publication::new("chat:lobby", json!({"text": "hi"})).from_user("alice");
    /// assert_eq!(p.source(), PublishSource::Client);
    /// assert_eq!(p.user(), Some("alice"));
    /// assert_eq!(p.data()["text"], "hi");
    ///
    /// let admin = Connection::new("root").with_claims(json!({"sub": "root", "role": "admin"}));
    /// let p = Publication::new("chat:lobby", json!(null)).with_connection(admin);
    /// assert_eq!(p.connection().unwrap().claim("role"), Some(&json!("admin")));
    /// ```
    pub fn new(channel: impl Into<String>, data: Value) -> Self {
        Self {
            host: None,
            source: OnceCell::from(PublishSource::Api),
            channels: OnceCell::from(vec![channel.into()]),
            user: OnceCell::from(None),
            connection: OnceCell::from(None),
            meta: OnceCell::from(Value::Object(Map::new())),
            data_bytes: OnceCell::from(data.to_string().into_bytes()),
            data: OnceCell::from(data),
            payload_read: Cell::new(false),
            edits: Edits::default(),
        }
    }

    /// Published by `user` over a connection ([`Connection::new`]).
    pub fn from_user(self, user: impl Into<String>) -> Self {
        self.with_connection(Connection::new(user))
    }

    /// Published over `conn`, by its user.
    pub fn with_connection(mut self, conn: Connection) -> Self {
        self.source = OnceCell::from(PublishSource::Client);
        self.user = OnceCell::from(Some(conn.user.clone()));
        self.connection = OnceCell::from(Some(conn));
        self
    }

    /// Came from `source`; [`PublishSource::Api`] and [`PublishSource::Nats`] have
    /// no connection, so this drops one set before.
    pub fn with_source(mut self, source: PublishSource) -> Self {
        if source != PublishSource::Client {
            self.connection = OnceCell::from(None);
        }
        self.source = OnceCell::from(source);
        self
    }

    /// Publishing user without a connection, as a `nats` publication may have.
    pub fn with_user(mut self, user: Option<&str>) -> Self {
        self.user = OnceCell::from(user.map(str::to_owned));
        self
    }

    /// Target channels as set by earlier plugins; the first is the one published to.
    pub fn with_channels<S: Into<String>>(mut self, channels: impl IntoIterator<Item = S>) -> Self {
        self.channels = OnceCell::from(channels.into_iter().map(Into::into).collect::<Vec<_>>());
        self
    }

    /// `meta` as set by earlier plugins, a JSON object.
    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = OnceCell::from(meta);
        self
    }
}

impl<'h> Publication<'h> {
    pub(crate) fn from_host(host: &'h wit::Publication) -> Self {
        Self {
            host: Some(host),
            source: OnceCell::new(),
            channels: OnceCell::new(),
            user: OnceCell::new(),
            connection: OnceCell::new(),
            meta: OnceCell::new(),
            data_bytes: OnceCell::new(),
            data: OnceCell::new(),
            payload_read: Cell::new(false),
            edits: Edits::default(),
        }
    }

    fn host(&self) -> &'h wit::Publication {
        self.host
            .expect("a publication built by Publication::new has every field filled in")
    }

    /// Where the publication came from.
    pub fn source(&self) -> PublishSource {
        *self.source.get_or_init(|| self.host().source())
    }

    /// Target channels as set by earlier plugins; the first is the one published to.
    pub fn channels(&self) -> &[String] {
        self.channels.get_or_init(|| self.host().channels())
    }

    /// The channel published to.
    pub fn channel(&self) -> &str {
        self.channels().first().map_or("", String::as_str)
    }

    /// The publishing user (`sub`): always for `client`, for `nats` when the origin
    /// knew it, never for `api`.
    pub fn user(&self) -> Option<&str> {
        self.user.get_or_init(|| self.host().user()).as_deref()
    }

    /// The publishing connection, when the source is `client`.
    pub fn connection(&self) -> Option<&Connection> {
        self.connection
            .get_or_init(|| self.host().connection().map(Connection::from))
            .as_ref()
    }

    /// One claim of the publisher's token (`None` without a connection or when the
    /// token lacks it). Cheaper than [`connection`](Self::connection) when a claim
    /// or two is all a hook needs: only that claim is copied into the plugin.
    ///
    /// ```
    /// use hookwire_plugin::{Connection, Publication, json};
    ///
    /// let alice = Connection::new("alice").with_claims(json!({"sub": "alice", "name": "Alice"}));
    /// let p = Publication::new("chat:lobby", json!({})).with_connection(alice);
    /// assert_eq!(p.claim("name"), Some(json!("Alice")));
    /// assert_eq!(p.claim("role"), None);
    /// ```
    pub fn claim(&self, name: &str) -> Option<Value> {
        match (self.host, self.connection.get()) {
            (Some(host), None) => host
                .claim(name)
                .and_then(|text| serde_json::from_str(&text).ok()),
            _ => self.connection()?.claim(name).cloned(),
        }
    }

    /// `meta` as set by earlier plugins, a JSON object (`{}` when none).
    pub fn meta(&self) -> &Value {
        self.meta
            .get_or_init(|| crate::connection::parse_object(&self.host().meta()))
    }

    /// Payload size in bytes, without copying the payload.
    pub fn data_len(&self) -> u64 {
        match self.data_bytes.get() {
            Some(bytes) => bytes.len() as u64,
            None => self.host().data_len(),
        }
    }

    /// The payload as JSON text, copied from the broker on first use.
    pub fn data_bytes(&self) -> &[u8] {
        self.payload_read.set(true);
        self.data_bytes.get_or_init(|| self.host().data())
    }

    /// The payload, parsed on first use. The broker only passes JSON; should a
    /// payload not parse, this is `null`.
    pub fn data(&self) -> &Value {
        self.payload_read.set(true);
        self.data
            .get_or_init(|| serde_json::from_slice(self.data_bytes()).unwrap_or(Value::Null))
    }

    /// Replaces the payload.
    pub fn set_data(&mut self, data: Value) {
        self.edits.data = Some(data);
    }

    /// Adds, or overwrites, a `meta` field.
    pub fn add_meta(&mut self, key: impl Into<String>, value: Value) {
        self.edits.meta.insert(key.into(), value);
    }

    /// Replaces the target channels; the set must not be empty. Plugins later in
    /// the chain see the new set.
    pub fn set_channels<S: Into<String>>(&mut self, channels: impl IntoIterator<Item = S>) {
        self.edits.channels = Some(channels.into_iter().map(Into::into).collect());
    }

    /// Adds a target channel.
    pub fn add_channel(&mut self, channel: impl Into<String>) {
        self.edits.added_channels.push(channel.into());
    }

    /// Emits an extra publication of `data` to `channel`; add `meta` fields to it
    /// with [`Emitted::add_meta`]. Emitted publications do not pass through
    /// `on_publish` hooks.
    pub fn emit(&mut self, channel: impl Into<String>, data: Value) -> &mut Emitted {
        self.edits.emitted.push(Emitted {
            channel: channel.into(),
            data,
            meta: Map::new(),
        });
        self.edits.emitted.last_mut().expect("just pushed")
    }

    /// Everything this hook changed.
    pub fn edits(&self) -> &Edits {
        &self.edits
    }

    /// The payload this hook set, if it replaced it.
    pub fn data_after(&self) -> Option<&Value> {
        self.edits.data.as_ref()
    }

    /// The `meta` fields this hook added.
    pub fn meta_added(&self) -> &Map<String, Value> {
        &self.edits.meta
    }

    /// The publications this hook emitted.
    pub fn emitted(&self) -> &[Emitted] {
        &self.edits.emitted
    }

    /// The target channels after this hook's edits.
    pub fn channels_after(&self) -> Vec<String> {
        let mut channels = match &self.edits.channels {
            Some(set) => set.clone(),
            None => self.channels().to_vec(),
        };
        channels.extend(self.edits.added_channels.iter().cloned());
        channels
    }

    /// Whether the hook read the payload (`data` or `data_bytes`), for tests of
    /// plugins that promise not to.
    pub fn payload_read(&self) -> bool {
        self.payload_read.get()
    }

    /// The answer the broker gets for a hook that returned `decision`: a refusal,
    /// a plain allow when nothing was edited, or the edits.
    pub fn finish(self, decision: Decision) -> PublishDecision {
        match decision {
            Decision::Refuse(reason) => PublishDecision::Refuse(reason),
            Decision::Allow if self.edits.is_empty() => PublishDecision::Allow,
            Decision::Allow => PublishDecision::Modify(self.edits.into()),
        }
    }
}

impl Edits {
    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl Emitted {
    /// Adds, or overwrites, a `meta` field of the emitted publication.
    pub fn add_meta(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.meta.insert(key.into(), value);
        self
    }
}

impl From<Edits> for PublishEdit {
    fn from(edits: Edits) -> Self {
        Self {
            data: edits.data.map(json_bytes),
            add_meta: meta_fields(edits.meta),
            set_channels: edits.channels,
            add_channels: edits.added_channels,
            emit: edits
                .emitted
                .into_iter()
                .map(|e| ExtraPublication {
                    channel: e.channel,
                    data: json_bytes(e.data),
                    meta: meta_fields(e.meta),
                })
                .collect(),
        }
    }
}

fn json_bytes(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn meta_fields(meta: Map<String, Value>) -> Vec<MetaField> {
    meta.into_iter()
        .map(|(key, value)| MetaField {
            key,
            value: value.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn no_edit_answers_a_plain_allow() {
        let p = Publication::new("chat:lobby", json!({"text": "hi"}));
        assert_eq!(p.finish(Decision::Allow), PublishDecision::Allow);
    }

    #[test]
    fn a_refusal_drops_the_edits() {
        let mut p = Publication::new("chat:lobby", json!({}));
        p.add_meta("seen", json!(true));
        assert_eq!(
            p.finish(Decision::refuse("no")),
            PublishDecision::Refuse(crate::Refusal::new("no"))
        );
    }

    #[test]
    fn edits_become_one_modify_answer() {
        let mut p = Publication::new("chat:lobby", json!({"text": "hi"}));
        p.set_data(json!({"text": "HI"}));
        p.add_meta("n", json!(1));
        p.add_meta("n", json!(2));
        p.add_channel("chat:archive");
        p.emit("user:bob", json!({"kind": "mention"}))
            .add_meta("from", json!("alice"));

        assert_eq!(p.data_after(), Some(&json!({"text": "HI"})));
        assert_eq!(p.meta_added()["n"], json!(2));
        assert_eq!(p.channels_after(), ["chat:lobby", "chat:archive"]);
        assert_eq!(
            p.finish(Decision::Allow),
            PublishDecision::Modify(PublishEdit {
                data: Some(br#"{"text":"HI"}"#.to_vec()),
                add_meta: vec![MetaField {
                    key: "n".into(),
                    value: "2".into()
                }],
                set_channels: None,
                add_channels: vec!["chat:archive".into()],
                emit: vec![ExtraPublication {
                    channel: "user:bob".into(),
                    data: br#"{"kind":"mention"}"#.to_vec(),
                    meta: vec![MetaField {
                        key: "from".into(),
                        value: r#""alice""#.into()
                    }],
                }],
            })
        );
    }

    #[test]
    fn set_channels_replaces_the_set() {
        let mut p = Publication::new("chat:lobby", json!(1)).with_channels(["a:1", "a:2"]);
        p.set_channels(["b:1"]);
        p.add_channel("b:2");
        assert_eq!(p.channel(), "a:1");
        assert_eq!(p.channels_after(), ["b:1", "b:2"]);
    }

    #[test]
    fn reading_the_payload_is_recorded() {
        let p = Publication::new("chat:lobby", json!({"a": 1}));
        assert_eq!(p.data_len(), 7);
        assert!(!p.payload_read());
        assert_eq!(p.data_bytes(), br#"{"a":1}"#);
        assert!(p.payload_read());
    }

    #[test]
    fn sources_and_users() {
        let api = Publication::new("c:1", json!(null));
        assert_eq!(
            (api.source(), api.user(), api.connection()),
            (PublishSource::Api, None, None)
        );

        let client = Publication::new("c:1", json!(null)).from_user("alice");
        assert_eq!(client.connection().map(|c| c.user.as_str()), Some("alice"));

        let nats = Publication::new("c:1", json!(null))
            .from_user("alice")
            .with_source(PublishSource::Nats);
        assert_eq!((nats.user(), nats.connection()), (Some("alice"), None));
    }
}
