//! Client protocol v1 (`broker/docs/protocol.md`): frames, error codes and close codes.
//!
//! Pure data and encoding, no I/O. Transports hand text frames to [`parse_request`] and
//! write the [`EncodedFrame`]s this module produces; sessions speak only in these types.
//!
//! ```text
//! protocol     EncodedFrame (shared bytes), now_ms, truncate_utf8
//!   codes      ErrorCode, CloseCode, Disconnect, ErrorReply
//!   request    parse_request → Request { id, body: RequestBody }
//!   reply      every server frame: replies, pushes, the one `message` encoding
//! ```

mod codes;
mod reply;
mod request;

use bytes::Bytes;

pub use codes::{CloseCode, Disconnect, ErrorCode, ErrorReply};
pub use reply::{
    PresenceEntry, PublicationFields, Recovery, encode, encode_join, encode_leave, encode_message,
    error_reply, history_reply, presence_reply, published_reply, reply, reply_with_publications,
    subscribed_reply, write_publication_json,
};
pub(crate) use request::present_raw;
pub use request::{
    MAX_DATA_DEPTH, MAX_KEY_BYTES, MAX_NAME_BYTES, ParseError, Request, RequestBody,
    StreamPosition, check_depth, check_key, parse_request,
};

/// The WebSocket subprotocol the server selects when a client offers it.
pub const SUBPROTOCOL: &str = "hookwire.v1";

/// A server frame, serialized once: one JSON object, valid UTF-8, in bytes this module
/// owns (no transport's type): a WebSocket transport writes them as a text frame, a
/// stream transport as one line.
///
/// Cloning shares the bytes (a reference count), so one publication encoded once can be
/// queued for every subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame(Bytes);

impl EncodedFrame {
    pub(crate) fn from_json(json: String) -> Self {
        Self(Bytes::from(json))
    }

    /// What `serde_json` wrote for one of our frames: UTF-8 by construction (serde_json
    /// writes only UTF-8), so it is not scanned again here.
    pub(crate) fn from_serialized(json: Vec<u8>) -> Self {
        Self(Bytes::from(json))
    }

    /// A frame received as bytes (another node's push): checked to be UTF-8 once.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }

    /// The frame as text (not on the delivery path: it checks the UTF-8 again).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("frames are built from UTF-8")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The shared bytes, for transports to write (a reference count, no copy).
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The shared bytes, taking this reference.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary
/// (close reasons, log lines and echoed input are cut with it).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    #[test]
    fn data_nesting_is_capped_and_strings_do_not_count() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check_depth(&nested(MAX_DATA_DEPTH)).is_ok());
        assert!(check_depth(&nested(MAX_DATA_DEPTH + 1)).is_err());
        let in_string = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(check_depth(&in_string).is_ok(), "{in_string}");
        // More openers than the cap, but side by side: walked, and shallow.
        let siblings = format!("[{}]", vec!["{}"; 3 * MAX_DATA_DEPTH].join(","));
        assert!(check_depth(&siblings).is_ok());
        let frame = format!(
            r#"{{"type":"publish","id":7,"channel":"chat:a","data":{}}}"#,
            nested(MAX_DATA_DEPTH + 1)
        );
        let e = parse_request(&frame).unwrap_err();
        assert_eq!(e.id, Some(7));
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
    }

    #[test]
    fn connect_names_are_capped() {
        let frame = |n: usize| format!(r#"{{"type":"connect","name":"{}"}}"#, "n".repeat(n));
        assert!(parse_request(&frame(MAX_NAME_BYTES)).is_ok());
        let e = parse_request(&frame(MAX_NAME_BYTES + 1)).unwrap_err();
        assert!(
            e.message.contains("`name` must be at most 256 bytes"),
            "{}",
            e.message
        );
    }

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
        // Strings borrow from the frame; one with escapes is unescaped into its own.
        let text = r#"{"type":"publish","channel":"chat:a","data":{"x":1},"key":"k\u0031"}"#;
        match parse_request(text).unwrap().body {
            RequestBody::Publish { channel, data, key } => {
                assert!(matches!(channel, Cow::Borrowed("chat:a")), "{channel:?}");
                assert_eq!(data.get(), r#"{"x":1}"#);
                assert!(
                    matches!(key, Some(Cow::Owned(ref k)) if k == "k1"),
                    "{key:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = parse_request(r#"{"type":"subscribe","channel":null}"#).unwrap_err();
        assert!(e.message.contains("needs a `channel`"), "{}", e.message);
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

    /// The hand-written encoders write exactly what serde_json writes for the same fields.
    #[test]
    fn message_and_published_encode_as_serde_json_would() {
        #[derive(serde::Serialize)]
        struct Message<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            fields: &'a PublicationFields<'a>,
        }
        #[derive(serde::Serialize)]
        struct Published<'a> {
            channel: &'a str,
            offset: u64,
        }
        let data = RawValue::from_string(r#"{"t":1,"p":"x\"y"}"#.into()).unwrap();
        let meta = RawValue::from_string(r#"{"by":"bot"}"#.into()).unwrap();
        let odd = "q\"uo\\te \u{1} tab\t é 😀 \u{7f}";
        for channel in ["chat:a", "x", odd] {
            for user in [None, Some("alice"), Some(""), Some(odd)] {
                for meta in [None, Some(&*meta)] {
                    for (offset, ts) in [(0, 0), (7, 1_796_069_492_123), (u64::MAX, u64::MAX)] {
                        let data = &*data;
                        let fields = PublicationFields {
                            channel,
                            offset,
                            ts,
                            user,
                            data,
                            meta,
                        };
                        let message = Message {
                            kind: "message",
                            fields: &fields,
                        };
                        let expected = serde_json::to_string(&message).unwrap();
                        assert_eq!(encode_message(&fields).as_str(), expected);
                    }
                }
            }
            for id in [None, Some(1), Some(u64::MAX)] {
                let expected = reply(
                    id,
                    "published",
                    Published {
                        channel,
                        offset: 42,
                    },
                );
                assert_eq!(published_reply(id, channel, 42).as_str(), expected.as_str());
            }
        }
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
