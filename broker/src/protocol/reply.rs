//! Server frames: replies, pushes and the one encoding of a publication. The session and
//! the server API both answer through these encoders, so a reply has one shape.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{EncodedFrame, ErrorReply};

/// Serializes a server frame. Serializing our own types to a `String` cannot fail.
pub fn encode<T: Serialize>(frame: &T) -> EncodedFrame {
    encode_sized(frame, SMALL_FRAME)
}

/// Room for a reply without a payload (`published`, `pong`, errors): one allocation.
const SMALL_FRAME: usize = 128;

/// Serializes a server frame into a buffer of `capacity` bytes (it grows if that was too
/// little): one allocation instead of a string doubling its way up.
fn encode_sized<T: Serialize>(frame: &T, capacity: usize) -> EncodedFrame {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, frame).expect("server frames always serialize");
    EncodedFrame::from_serialized(out)
}

#[derive(Serialize)]
struct WithId<'a, T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
}

/// Encodes a reply `{"id":…,"type":kind,…body}`.
pub fn reply<T: Serialize>(id: Option<u64>, kind: &str, body: T) -> EncodedFrame {
    encode(&WithId { id, kind, body })
}

/// Encodes an `error` reply.
pub fn error_reply(id: Option<u64>, err: &ErrorReply) -> EncodedFrame {
    #[derive(Serialize)]
    struct Body<'a> {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason_code: Option<&'a str>,
    }
    reply(
        id,
        "error",
        Body {
            code: err.code.as_str(),
            message: &err.message,
            reason_code: err.reason_code.as_deref(),
        },
    )
}

/// A publication as the hub builds it, before it is encoded once. (Tests serialize it
/// with serde_json to check [`encode_message`] against.)
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
pub struct PublicationFields<'a> {
    pub channel: &'a str,
    pub offset: u64,
    pub ts: u64,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub user: Option<&'a str>,
    pub data: &'a RawValue,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub meta: Option<&'a RawValue>,
}

const MESSAGE_PREFIX: &str = r#"{"type":"message","#;

/// Encodes the `message` push for a publication. The publication object itself is the
/// same bytes without the `type` field, so history keeps one buffer for both
/// ([`publication_json`]). Written field by field (the bytes serde_json would write for
/// the same struct, a test checks): this runs once per publication, and the derived
/// serializer escapes every field name and grows its buffer.
pub fn encode_message(publication: &PublicationFields<'_>) -> EncodedFrame {
    // The fixed part (field names, offset, ts) is under 96 bytes.
    let capacity = 96
        + publication.channel.len()
        + publication.user.map_or(0, str::len)
        + publication.data.get().len()
        + publication.meta.map_or(0, |m| m.get().len());
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(MESSAGE_PREFIX.as_bytes());
    out.extend_from_slice(br#""channel":"#);
    write_str(&mut out, publication.channel);
    out.extend_from_slice(br#","offset":"#);
    write_u64(&mut out, publication.offset);
    out.extend_from_slice(br#","ts":"#);
    write_u64(&mut out, publication.ts);
    if let Some(user) = publication.user {
        out.extend_from_slice(br#","user":"#);
        write_str(&mut out, user);
    }
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(publication.data.get().as_bytes());
    if let Some(meta) = publication.meta {
        out.extend_from_slice(br#","meta":"#);
        out.extend_from_slice(meta.get().as_bytes());
    }
    out.push(b'}');
    EncodedFrame::from_serialized(out)
}

/// Encodes the `published` reply, as [`reply`] would (it runs once per publication).
/// Sized exactly, so the frame's bytes take one allocation (a `Vec` with room to spare
/// becomes `Bytes` with a second one for its header).
pub fn published_reply(id: Option<u64>, channel: &str, offset: u64) -> EncodedFrame {
    const ID: &[u8] = br#""id":"#;
    const TYPE: &[u8] = br#""type":"published","channel":"#;
    const OFFSET: &[u8] = br#","offset":"#;
    let (mut id_digits, mut offset_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let id = id.map(|id| id_digits.format(id).as_bytes());
    let offset = offset_digits.format(offset).as_bytes();
    let plain = !needs_escape(channel);
    let exact = 2
        + id.map_or(0, |id| ID.len() + id.len() + 1)
        + TYPE.len()
        + if plain { channel.len() + 2 } else { 0 }
        + OFFSET.len()
        + offset.len();
    let mut out = Vec::with_capacity(exact);
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(ID);
        out.extend_from_slice(id);
        out.push(b',');
    }
    out.extend_from_slice(TYPE);
    write_str_as(&mut out, channel, !plain);
    out.extend_from_slice(OFFSET);
    out.extend_from_slice(offset);
    out.push(b'}');
    debug_assert!(!plain || out.len() == out.capacity());
    EncodedFrame::from_serialized(out)
}

/// Whether serde_json would escape something in `s` (a quote, a backslash or a control
/// character).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string as serde_json writes it: copied when nothing in it needs an escape
/// (a quote, a backslash or a control character), else escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_as(out, s, needs_escape(s));
}

/// [`write_str`] with [`needs_escape`] already known.
fn write_str_as(out: &mut Vec<u8>, s: &str, escape: bool) {
    if escape {
        serde_json::to_writer(out, s).expect("a string always serializes");
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the publication object held in a `message` push frame to `out`.
pub fn write_publication_json(message: &EncodedFrame, out: &mut Vec<u8>) {
    out.push(b'{');
    out.extend_from_slice(&message.as_bytes()[MESSAGE_PREFIX.len()..]);
}

/// Encodes a reply whose body ends with a `publications` array taken from stored
/// `message` frames without re-serializing them.
pub fn reply_with_publications<T: Serialize>(
    id: Option<u64>,
    kind: &str,
    head: T,
    publications: &[EncodedFrame],
) -> EncodedFrame {
    let mut out = serde_json::to_vec(&WithId {
        id,
        kind,
        body: head,
    })
    .expect("server frames always serialize");
    let cap = publications.iter().map(|p| p.len()).sum::<usize>() + 32;
    out.reserve(cap);
    out.pop(); // the closing brace
    out.extend_from_slice(br#","publications":["#);
    for (i, publication) in publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_publication_json(publication, &mut out);
    }
    out.extend_from_slice(b"]}");
    let text = String::from_utf8(out).expect("JSON built from UTF-8 parts is UTF-8");
    EncodedFrame::from_json(text)
}

/// A stream's position and what a read returned, as `subscribed` and `history` replies
/// carry it (a namespace without history: offset 0, epoch `""`, no publications).
#[derive(Debug, Clone, Copy)]
pub struct Recovery<'a> {
    pub offset: u64,
    pub epoch: &'a str,
    /// Only in `subscribed`: whether the `recover` position was served exactly.
    pub recovered: bool,
    /// Stored `message` frames, spliced in without re-encoding.
    pub publications: &'a [EncodedFrame],
    /// `Some(offset)`: the publications were cut at `limits.max_reply_bytes`; the reply
    /// says `"more": true` and `"next_offset"`, where a `history` `since` goes on.
    pub next: Option<u64>,
}

/// `"more": true, "next_offset": N` in a cut reply; nothing in a whole one (so replies
/// that fit look as protocol v1 has them).
#[derive(Serialize)]
struct Continuation {
    #[serde(skip_serializing_if = "Option::is_none")]
    more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
}

impl Continuation {
    fn of(next: Option<u64>) -> Self {
        Self {
            more: next.map(|_| true),
            next_offset: next,
        }
    }
}

/// The `subscribed` reply.
pub fn subscribed_reply(id: Option<u64>, channel: &str, r: &Recovery<'_>) -> EncodedFrame {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        recovered: bool,
        #[serde(flatten)]
        more: Continuation,
    }
    let head = Subscribed {
        channel,
        offset: r.offset,
        epoch: r.epoch,
        recovered: r.recovered,
        more: Continuation::of(r.next),
    };
    reply_with_publications(id, "subscribed", head, r.publications)
}

/// The `history` reply (the server API sends the same object without `id`).
pub fn history_reply(id: Option<u64>, channel: &str, r: &Recovery<'_>) -> EncodedFrame {
    #[derive(Serialize)]
    struct Head<'a> {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        #[serde(flatten)]
        more: Continuation,
    }
    let head = Head {
        channel,
        offset: r.offset,
        epoch: r.epoch,
        more: Continuation::of(r.next),
    };
    reply_with_publications(id, "history", head, r.publications)
}

/// One member of a channel's presence.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    pub client: String,
    pub user: String,
    pub info: Box<RawValue>,
}

/// The `presence` reply (the server API sends the same object without `id`); `more`:
/// the list was cut at `limits.max_reply_bytes` (`"more": true`, omitted otherwise).
pub fn presence_reply(
    id: Option<u64>,
    channel: &str,
    clients: &[PresenceEntry],
    more: bool,
) -> EncodedFrame {
    #[derive(Serialize)]
    struct Presence<'a> {
        channel: &'a str,
        clients: &'a [PresenceEntry],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    }
    reply(
        id,
        "presence",
        Presence {
            channel,
            clients,
            more,
        },
    )
}

/// The `join` push other subscribers get when a client subscribes.
pub fn encode_join(channel: &str, client: &str, user: &str, info: &RawValue) -> EncodedFrame {
    #[derive(Serialize)]
    struct Join<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        client: &'a str,
        user: &'a str,
        info: &'a RawValue,
    }
    encode(&Join {
        kind: "join",
        channel,
        client,
        user,
        info,
    })
}

/// The `leave` push other subscribers get when a client unsubscribes or goes away.
pub fn encode_leave(channel: &str, client: &str, user: &str) -> EncodedFrame {
    #[derive(Serialize)]
    struct Leave<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        client: &'a str,
        user: &'a str,
    }
    encode(&Leave {
        kind: "leave",
        channel,
        client,
        user,
    })
}
