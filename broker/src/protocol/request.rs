//! Client frames: parsing one text frame into a checked [`Request`].

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::truncate_utf8;

/// A stream position: `offset` within the stream named by `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// One client frame, parsed and checked for required fields. Its strings and `data`
/// borrow from the frame's text where they can (a string with escapes is unescaped into
/// its own).
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<u64>,
    pub body: RequestBody<'a>,
}

#[derive(Debug)]
pub enum RequestBody<'a> {
    Connect {
        token: Option<Cow<'a, str>>,
        name: Option<Cow<'a, str>>,
    },
    Subscribe {
        channel: Cow<'a, str>,
        recover: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    Publish {
        channel: Cow<'a, str>,
        data: &'a RawValue,
        key: Option<Cow<'a, str>>,
    },
    History {
        channel: Cow<'a, str>,
        limit: Option<usize>,
        since: Option<StreamPosition>,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    Refresh {
        token: Cow<'a, str>,
    },
    Ping,
}

impl RequestBody<'_> {
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

/// Longest client-chosen `name` in `connect`, in bytes (longer: `bad_request`, then 4001).
pub const MAX_NAME_BYTES: usize = 256;

/// Deepest nesting of arrays and objects accepted in `data` (serde_json's own limit, 128,
/// only bounds its recursion).
pub const MAX_DATA_DEPTH: usize = 64;

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "text")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "text")]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    recover: Option<StreamPosition>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(borrow, default, deserialize_with = "present_raw_borrowed")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "text")]
    key: Option<Cow<'a, str>>,
}

/// Keeps `"data": null` apart from a missing `data`: `null` is a valid payload.
pub(crate) fn present_raw<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// [`present_raw`] for a frame's borrowed `data`.
fn present_raw_borrowed<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A string field, borrowed from the frame unless it had escapes. (serde's own `Cow`
/// inside an `Option` always allocates: its `borrow` applies to a bare `Cow` only.)
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
    }
    d.deserialize_option(Text)
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
                truncate_utf8(raw.get(), 40)
            )),
            Ok(id) => Ok(Some(id)),
        },
    }
}

/// Checks an idempotency key's length (client `publish` frames and `POST /api/publish`).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "`key` must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    Ok(())
}

/// Checks that JSON nests at most [`MAX_DATA_DEPTH`] arrays and objects deep (client
/// `publish` frames and `POST /api/publish`). Nesting needs an opening bracket per level,
/// so a payload with at most that many `[` and `{` anywhere (strings included) passes on
/// a count the compiler vectorises; only one with more is walked byte by byte, skipping
/// strings.
pub fn check_depth(json: &str) -> Result<(), String> {
    let openers = json
        .as_bytes()
        .iter()
        .fold(0usize, |n, &b| n + usize::from(b == b'[' || b == b'{'));
    if openers <= MAX_DATA_DEPTH {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(format!(
                        "`data` nests arrays and objects deeper than {MAX_DATA_DEPTH} levels; flatten it"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses one client text frame.
pub fn parse_request(text: &str) -> Result<Request<'_>, ParseError> {
    let wire: WireFrame<'_> = serde_json::from_str(text).map_err(|err| not_a_frame(text, &err))?;
    let id = parse_id(wire.id).map_err(|message| ParseError { id: None, message })?;
    let body = parse_body(wire).map_err(|message| ParseError { id, message })?;
    Ok(Request { id, body })
}

/// The error for text that is not a frame; keeps the id if only another field was wrong,
/// so the client can match the error.
fn not_a_frame(text: &str, err: &serde_json::Error) -> ParseError {
    let id = serde_json::from_str::<IdOnly<'_>>(text)
        .ok()
        .and_then(|f| parse_id(f.id).ok().flatten());
    let message = if err.is_syntax() || err.is_eof() {
        format!("the frame is not valid JSON ({err}); send one JSON object per text frame")
    } else {
        format!("the frame does not match protocol v1: {err}")
    };
    ParseError { id, message }
}

/// The request a well-formed frame asks for, checked for its required fields.
fn parse_body<'a>(wire: WireFrame<'a>) -> Result<RequestBody<'a>, String> {
    let kind = wire.kind.ok_or_else(|| {
        "the frame has no `type`; see broker/docs/protocol.md for the frame types".to_string()
    })?;
    let channel =
        |ch: Option<Cow<'a, str>>| ch.ok_or_else(|| format!("a `{kind}` frame needs a `channel`"));
    Ok(match kind.as_ref() {
        "connect" => {
            if let Some(name) = &wire.name
                && name.len() > MAX_NAME_BYTES
            {
                return Err(format!(
                    "`name` must be at most {MAX_NAME_BYTES} bytes, got {}",
                    name.len()
                ));
            }
            RequestBody::Connect {
                token: wire.token,
                name: wire.name,
            }
        }
        "subscribe" => RequestBody::Subscribe {
            channel: channel(wire.channel)?,
            recover: wire.recover,
        },
        "unsubscribe" => RequestBody::Unsubscribe {
            channel: channel(wire.channel)?,
        },
        "publish" => parse_publish(channel(wire.channel)?, wire.data, wire.key)?,
        "history" => RequestBody::History {
            channel: channel(wire.channel)?,
            limit: parse_limit(wire.limit)?,
            since: wire.since,
        },
        "presence" => RequestBody::Presence {
            channel: channel(wire.channel)?,
        },
        "refresh" => RequestBody::Refresh {
            token: wire
                .token
                .ok_or_else(|| "a `refresh` frame needs a `token`".to_string())?,
        },
        "ping" => RequestBody::Ping,
        other => {
            return Err(format!(
                "unknown frame type `{}`; expected one of connect, subscribe, unsubscribe, publish, history, presence, refresh, ping",
                truncate_utf8(other, 40)
            ));
        }
    })
}

fn parse_publish<'a>(
    channel: Cow<'a, str>,
    data: Option<&'a RawValue>,
    key: Option<Cow<'a, str>>,
) -> Result<RequestBody<'a>, String> {
    let data = data.ok_or_else(|| "a `publish` frame needs `data` (any JSON value)".to_string())?;
    check_depth(data.get())?;
    if let Some(key) = &key {
        check_key(key)?;
    }
    Ok(RequestBody::Publish { channel, data, key })
}

fn parse_limit(limit: Option<i64>) -> Result<Option<usize>, String> {
    match limit {
        None => Ok(None),
        Some(n) if n >= 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(format!("`limit` must be zero or more, got {n}")),
    }
}
