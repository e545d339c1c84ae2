//! The client-facing table of error codes and close codes, with what a client should do
//! after each; reused in logs and metric labels.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

use super::{EncodedFrame, encode};

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
    /// A frame that breaks the WebSocket protocol (unmasked, reserved bits set, a
    /// fragmented control frame): fix the client.
    ProtocolError,
    /// A text frame that is not valid UTF-8: fix the client.
    InvalidData,
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
            Self::ProtocolError => 1002,
            Self::InvalidData => 1007,
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
            Self::ProtocolError => "protocol_error",
            Self::InvalidData => "invalid_data",
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
    /// A plugin's machine-readable refusal code (`rejected` only; Hookwire's extension).
    pub reason_code: Option<String>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason_code: None,
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
