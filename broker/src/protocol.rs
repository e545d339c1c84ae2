//! Client protocol v1 (`broker/docs/protocol.md`): frames, error codes and close codes.
//!
//! Pure data and encoding, no I/O. Transports hand text frames to [`parse_request`] and
//! write the [`EncodedFrame`]s this module produces; sessions speak only in these types.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The WebSocket subprotocol the server selects when a client offers it.
pub const SUBPROTOCOL: &str = "hookwire.v1";

/// A server frame, serialized once: one JSON object, valid UTF-8.
///
/// Cloning shares the bytes (a reference count), so one publication encoded once can be
/// queued for every subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame(Utf8Bytes);

impl EncodedFrame {
    fn from_json(json: String) -> Self {
        Self(Utf8Bytes::from(json))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The UTF-8 text as a shared buffer, for transports that write text frames.
    pub fn utf8(&self) -> Utf8Bytes {
        self.0.clone()
    }

    /// The raw shared bytes, for transports that write byte streams.
    pub fn bytes(&self) -> Bytes {
        let bytes: &Bytes = self.0.as_ref();
        bytes.clone()
    }
}

/// Client-facing error codes. `message` beside a code is always a sentence a person can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is malformed or names an invalid channel: fix the client.
    BadRequest,
    /// No valid `connect` yet, or a bad token: get a token and connect.
    Unauthorized,
    /// The token's `exp` has passed: get a new token.
    TokenExpired,
    /// The token does not grant this channel or action.
    Forbidden,
    /// Unknown namespace, or data that is not there.
    NotFound,
    /// Over a configured rate: slow down.
    RateLimited,
    /// Over a size limit.
    TooLarge,
    /// A plugin refused; `message` carries its reason.
    Rejected,
    /// The broker cannot serve this now (draining, dependency down): retry later.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Close codes, with what a client should do after each (`reconnect` in the `disconnect` push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// Normal close: stop.
    Normal,
    /// A frame over `limits.max_frame_bytes`: fix the client.
    TooLarge,
    /// The server is restarting or draining: reconnect with jittered backoff and recover.
    Restart,
    /// The server is at its connection limit: retry later with backoff.
    TryAgainLater,
    /// No valid `connect` in time, a bad token, or a token in the URL: get a token, reconnect.
    Unauthorized,
    /// The token expired and was not refreshed: refresh it, then reconnect.
    TokenExpired,
    /// An operator disconnected the user or revoked the token: stop.
    Forbidden,
    /// Repeated rate-limit violations: reconnect later.
    RateLimited,
    /// The client did not read and its outbound queue overflowed: reconnect and recover.
    SlowConsumer,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::TooLarge => 1009,
            Self::Restart => 1012,
            Self::TryAgainLater => 1013,
            Self::Unauthorized => 4001,
            Self::TokenExpired => 4002,
            Self::Forbidden => 4003,
            Self::RateLimited => 4008,
            Self::SlowConsumer => 4009,
        }
    }

    /// Whether the client should reconnect (sent as `reconnect` in the `disconnect` push).
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            Self::Restart
                | Self::TryAgainLater
                | Self::Unauthorized
                | Self::TokenExpired
                | Self::RateLimited
                | Self::SlowConsumer
        )
    }

    /// A short label for logs and metrics (a bounded set).
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::TooLarge => "too_large",
            Self::Restart => "restart",
            Self::TryAgainLater => "at_capacity",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::SlowConsumer => "slow_consumer",
        }
    }
}

/// Why the server ends a session: sent as a `disconnect` push, then as the close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub code: CloseCode,
    pub reason: Cow<'static, str>,
    /// A hint for how long to wait before reconnecting (jittered by the sender).
    pub delay_ms: Option<u64>,
}

impl Disconnect {
    pub fn new(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
            delay_ms: None,
        }
    }

    pub fn encode(&self) -> EncodedFrame {
        #[derive(Serialize)]
        struct Push<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            code: u16,
            reason: &'a str,
            reconnect: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            delay_ms: Option<u64>,
        }
        encode(&Push {
            kind: "disconnect",
            code: self.code.code(),
            reason: &self.reason,
            reconnect: self.code.reconnect(),
            delay_ms: self.delay_ms,
        })
    }
}

/// A client-visible failure of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A stream position: `offset` within the stream named by `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// One client frame, parsed and checked for required fields.
#[derive(Debug)]
pub struct Request {
    pub id: Option<u64>,
    pub body: RequestBody,
}

#[derive(Debug)]
pub enum RequestBody {
    Connect {
        token: Option<String>,
        name: Option<String>,
    },
    Subscribe {
        channel: String,
        recover: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
        key: Option<String>,
    },
    History {
        channel: String,
        limit: Option<usize>,
        since: Option<StreamPosition>,
    },
    Presence {
        channel: String,
    },
    Refresh {
        token: String,
    },
    Ping,
}

impl RequestBody {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::History { .. } => "history",
            Self::Presence { .. } => "presence",
            Self::Refresh { .. } => "refresh",
            Self::Ping => "ping",
        }
    }
}

/// A frame that could not be parsed; `id` is kept when it could be read, so the error
/// reply can carry it.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub id: Option<u64>,
    pub message: String,
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    recover: Option<StreamPosition>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default, deserialize_with = "present_raw")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    key: Option<String>,
}

/// Keeps `"data": null` apart from a missing `data`: `null` is a valid payload.
pub(crate) fn present_raw<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn parse_id(raw: Option<&RawValue>) -> Result<Option<u64>, String> {
    match raw {
        None => Ok(None),
        Some(raw) => match raw.get().parse::<u64>() {
            Ok(0) | Err(_) => Err(format!(
                "`id` must be a positive integer, got {}",
                truncate(raw.get(), 40)
            )),
            Ok(id) => Ok(Some(id)),
        },
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses one client text frame.
pub fn parse_request(text: &str) -> Result<Request, ParseError> {
    let wire: WireFrame<'_> = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(err) => {
            // Keep the id if only another field was wrong, so the client can match the error.
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|f| parse_id(f.id).ok().flatten());
            let message = if err.is_syntax() || err.is_eof() {
                format!("the frame is not valid JSON ({err}); send one JSON object per text frame")
            } else {
                format!("the frame does not match protocol v1: {err}")
            };
            return Err(ParseError { id, message });
        }
    };
    let id = parse_id(wire.id).map_err(|message| ParseError { id: None, message })?;
    let fail = |message: String| ParseError { id, message };
    let kind = wire.kind.ok_or_else(|| {
        fail("the frame has no `type`; see broker/docs/protocol.md for the frame types".into())
    })?;
    let channel =
        |ch: Option<String>| ch.ok_or_else(|| fail(format!("a `{kind}` frame needs a `channel`")));
    let body = match kind.as_ref() {
        "connect" => RequestBody::Connect {
            token: wire.token,
            name: wire.name,
        },
        "subscribe" => RequestBody::Subscribe {
            channel: channel(wire.channel)?,
            recover: wire.recover,
        },
        "unsubscribe" => RequestBody::Unsubscribe {
            channel: channel(wire.channel)?,
        },
        "publish" => {
            let channel = channel(wire.channel)?;
            let data = wire
                .data
                .ok_or_else(|| fail("a `publish` frame needs `data` (any JSON value)".into()))?;
            if let Some(key) = &wire.key
                && (key.is_empty() || key.len() > MAX_KEY_BYTES)
            {
                return Err(fail(format!(
                    "`key` must be 1 to {MAX_KEY_BYTES} bytes, got {}",
                    key.len()
                )));
            }
            RequestBody::Publish {
                channel,
                data,
                key: wire.key,
            }
        }
        "history" => {
            let limit = match wire.limit {
                None => None,
                Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(n) => return Err(fail(format!("`limit` must be zero or more, got {n}"))),
            };
            RequestBody::History {
                channel: channel(wire.channel)?,
                limit,
                since: wire.since,
            }
        }
        "presence" => RequestBody::Presence {
            channel: channel(wire.channel)?,
        },
        "refresh" => RequestBody::Refresh {
            token: wire
                .token
                .ok_or_else(|| fail("a `refresh` frame needs a `token`".into()))?,
        },
        "ping" => RequestBody::Ping,
        other => {
            return Err(fail(format!(
                "unknown frame type `{}`; expected one of connect, subscribe, unsubscribe, publish, history, presence, refresh, ping",
                truncate(other, 40)
            )));
        }
    };
    Ok(Request { id, body })
}

/// Serializes a server frame. Serializing our own types to a `String` cannot fail.
pub fn encode<T: Serialize>(frame: &T) -> EncodedFrame {
    EncodedFrame::from_json(serde_json::to_string(frame).expect("server frames always serialize"))
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
    }
    reply(
        id,
        "error",
        Body {
            code: err.code.as_str(),
            message: &err.message,
        },
    )
}

/// A publication as the hub builds it, before it is encoded once.
#[derive(Debug)]
pub struct PublicationFields<'a> {
    pub channel: &'a str,
    pub offset: u64,
    pub ts: u64,
    pub user: Option<&'a str>,
    pub data: &'a RawValue,
    pub meta: Option<&'a RawValue>,
}

const MESSAGE_PREFIX: &str = r#"{"type":"message","#;

/// Encodes the `message` push for a publication. The publication object itself is the
/// same bytes without the `type` field, so history keeps one buffer for both
/// ([`publication_json`]).
pub fn encode_message(publication: &PublicationFields<'_>) -> EncodedFrame {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        offset: u64,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a RawValue>,
    }
    let frame = encode(&Message {
        kind: "message",
        channel: publication.channel,
        offset: publication.offset,
        ts: publication.ts,
        user: publication.user,
        data: publication.data,
        meta: publication.meta,
    });
    debug_assert!(frame.as_str().starts_with(MESSAGE_PREFIX));
    frame
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

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_frame_type() {
        let r = parse_request(
            r#"{"type":"subscribe","id":3,"channel":"chat:a","recover":{"offset":4,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, Some(3));
        match r.body {
            RequestBody::Subscribe { channel, recover } => {
                assert_eq!(channel, "chat:a");
                assert_eq!(recover.unwrap().offset, 4);
            }
            other => panic!("unexpected {other:?}"),
        }
        let r = parse_request(r#"{"type":"publish","channel":"c","data":null}"#).unwrap();
        match r.body {
            RequestBody::Publish { data, .. } => assert_eq!(data.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_request(r#"{"type":"ping"}"#).unwrap().body,
            RequestBody::Ping
        ));
    }

    #[test]
    fn reports_errors_with_the_id_when_it_can() {
        let e = parse_request(r#"{"type":"publish","id":7,"channel":"c"}"#).unwrap_err();
        assert_eq!(e.id, Some(7));
        assert!(e.message.contains("data"), "{}", e.message);
        let e = parse_request(r#"{"type":"subscribe","id":8,"channel":5}"#).unwrap_err();
        assert_eq!(e.id, Some(8));
        let e = parse_request("{not json").unwrap_err();
        assert_eq!(e.id, None);
        assert!(e.message.contains("not valid JSON"));
        let e = parse_request(r#"{"type":"warp","id":2}"#).unwrap_err();
        assert!(e.message.contains("unknown frame type `warp`"));
        let e = parse_request(r#"{"type":"ping","id":-1}"#).unwrap_err();
        assert!(e.message.contains("positive integer"));
        let e = parse_request(r#"{"type":"ping","id":0}"#).unwrap_err();
        assert!(e.message.contains("positive integer"));
        let e = parse_request(r#"[1,2]"#).unwrap_err();
        assert!(e.message.contains("protocol v1"));
    }

    #[test]
    fn message_and_publication_share_bytes() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let frame = encode_message(&PublicationFields {
            channel: "chat:a",
            offset: 9,
            ts: 1,
            user: Some("alice"),
            data: &data,
            meta: None,
        });
        assert_eq!(
            frame.as_str(),
            r#"{"type":"message","channel":"chat:a","offset":9,"ts":1,"user":"alice","data":{"text":"hi"}}"#
        );
        let reply = reply_with_publications(
            Some(2),
            "history",
            serde_json::json!({"channel":"chat:a"}),
            &[frame.clone(), frame],
        );
        let v: serde_json::Value = serde_json::from_str(reply.as_str()).unwrap();
        assert_eq!(v["id"], 2);
        assert_eq!(v["publications"][1]["offset"], 9);
        assert!(v["publications"][0].get("type").is_none());
    }

    #[test]
    fn close_codes_say_whether_to_reconnect() {
        assert!(CloseCode::Restart.reconnect());
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(!CloseCode::Forbidden.reconnect());
        assert!(!CloseCode::TooLarge.reconnect());
        let d = Disconnect::new(CloseCode::SlowConsumer, "too slow");
        assert_eq!(
            d.encode().as_str(),
            r#"{"type":"disconnect","code":4009,"reason":"too slow","reconnect":true}"#
        );
    }
}
