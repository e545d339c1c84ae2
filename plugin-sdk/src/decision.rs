//! Constructors and checks on the contract's decision types, so hooks read
//! `Decision::refuse("...")` and tests read `decision.refusal()`.

use serde_json::Value;

use crate::{ConnectDecision, Decision, RefreshDecision, Refusal};

impl Refusal {
    /// A refusal with a reason and no code.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            code: None,
        }
    }

    /// Adds a machine-readable code (`[a-z0-9_]`, at most 64 bytes): clients get it
    /// as the error's `reason_code` (the broker leaves a malformed one out).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

impl Decision {
    /// Refuses with a reason: a short sentence the client, the log and the audit
    /// trail show.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Refuse(Refusal::new(reason))
    }

    /// Refuses with a machine-readable code (e.g. `"blocked_word"`) and a reason.
    pub fn refuse_with_code(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refuse(Refusal::new(reason).with_code(code))
    }

    /// Whether this is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }

    /// The reason of a refusal.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Allow => None,
            Self::Refuse(r) => Some(&r.reason),
        }
    }

    /// The code of a refusal, when it has one.
    pub fn refusal_code(&self) -> Option<&str> {
        match self {
            Self::Allow => None,
            Self::Refuse(r) => r.code.as_deref(),
        }
    }
}

impl ConnectDecision {
    /// Refuses the connection: the client gets error `rejected` with this reason,
    /// then close code 4003.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Refuse(Refusal::new(reason))
    }

    /// Refuses with a machine-readable code and a reason.
    pub fn refuse_with_code(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refuse(Refusal::new(reason).with_code(code))
    }

    /// Accepts and attaches metadata, a JSON object, that later hooks see in
    /// [`Connection::meta`](crate::Connection::meta).
    pub fn accept_with_meta(meta: Value) -> Self {
        Self::AcceptWithMeta(meta.to_string())
    }

    /// Whether the connection is accepted, with or without metadata.
    pub fn is_accepted(&self) -> bool {
        !matches!(self, Self::Refuse(_))
    }

    /// The reason of a refusal.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Refuse(r) => Some(&r.reason),
            Self::Accept | Self::AcceptWithMeta(_) => None,
        }
    }

    /// The metadata of [`ConnectDecision::AcceptWithMeta`], parsed.
    pub fn meta(&self) -> Option<Value> {
        match self {
            Self::AcceptWithMeta(text) => serde_json::from_str(text).ok(),
            Self::Accept | Self::Refuse(_) => None,
        }
    }
}

impl RefreshDecision {
    /// Refuses the new token: the connection keeps its current one.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Refuse(Refusal::new(reason))
    }

    /// Takes the new token and replaces this plugin's connection metadata.
    pub fn replace_meta(meta: Value) -> Self {
        Self::ReplaceMeta(meta.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decisions_read_back() {
        assert!(Decision::Allow.is_allowed());
        assert_eq!(Decision::refuse("no").refusal(), Some("no"));
        assert_eq!(Decision::refuse("no").refusal_code(), None);
        assert_eq!(Decision::refuse("no"), Decision::Refuse(Refusal::new("no")));
        let coded = Decision::refuse_with_code("spam", "no spam");
        assert_eq!(coded.refusal(), Some("no spam"));
        assert_eq!(coded.refusal_code(), Some("spam"));

        let meta = ConnectDecision::accept_with_meta(json!({"tier": "gold"}));
        assert!(meta.is_accepted());
        assert_eq!(meta.meta(), Some(json!({"tier": "gold"})));
        assert_eq!(
            ConnectDecision::refuse("blocked").refusal(),
            Some("blocked")
        );
        assert!(!ConnectDecision::refuse("blocked").is_accepted());
        assert_eq!(ConnectDecision::Accept.meta(), None);
        assert_eq!(
            RefreshDecision::replace_meta(json!({"a": 1})),
            RefreshDecision::ReplaceMeta(r#"{"a":1}"#.into())
        );
    }
}
