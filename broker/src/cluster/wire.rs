//! What a publication looks like on NATS: the parts every node needs to encode the same
//! `message` push (the offset comes from the stream's `Nats-Sequence` header).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::NewPublication;

#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<&'a str>,
    d: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    m: Option<&'a RawValue>,
    t: u64,
}

/// A publication as it travels between nodes.
#[derive(Deserialize)]
pub struct Wire<'a> {
    #[serde(borrow, default)]
    pub u: Option<&'a str>,
    #[serde(borrow)]
    pub d: &'a RawValue,
    #[serde(borrow, default)]
    pub m: Option<&'a RawValue>,
    pub t: u64,
}

pub fn encode(p: &NewPublication<'_>, ts_ms: u64) -> Bytes {
    let out = Out {
        u: p.user,
        d: p.data,
        m: p.meta,
        t: ts_ms,
    };
    Bytes::from(serde_json::to_vec(&out).expect("publication serializes"))
}

pub fn decode(payload: &[u8]) -> Result<Wire<'_>, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// The header that marks a `join`/`leave` push (its payload is the frame as is).
pub const PUSH_HEADER: &str = "Hookwire-Push";
