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
            if let Some(key) = &wire.key {
                check_key(key).map_err(fail)?;
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
                truncate_utf8(other, 40)
            )));
        }
    };
    Ok(Request { id, body })
}
