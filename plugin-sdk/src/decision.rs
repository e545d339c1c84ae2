//! Constructors and checks on the contract's decision types, so hooks read
//! `Decision::refuse("...")` and tests read `decision.refusal()`.

use serde_json::Value;

use crate::{ConnectDecision, Decision};

impl Decision {
    /// Refuses with a reason: a short sentence the client, the log and the audit
    /// trail show.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Refuse(reason.into())
    }

    /// Whether this is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }

    /// The reason of a refusal.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Allow => None,
            Self::Refuse(reason) => Some(reason),
        }
    }
}

impl ConnectDecision {
    /// Refuses the connection: the client gets error `rejected` with this reason,
    /// then close code 4003.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Refuse(reason.into())
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
            Self::Refuse(reason) => Some(reason),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decisions_read_back() {
        assert!(Decision::Allow.is_allowed());
        assert_eq!(Decision::refuse("no").refusal(), Some("no"));
        assert_eq!(Decision::refuse("no"), Decision::Refuse("no".into()));

        let meta = ConnectDecision::accept_with_meta(json!({"tier": "gold"}));
        assert!(meta.is_accepted());
        assert_eq!(meta.meta(), Some(json!({"tier": "gold"})));
        assert_eq!(
            ConnectDecision::refuse("blocked").refusal(),
            Some("blocked")
        );
        assert!(!ConnectDecision::refuse("blocked").is_accepted());
        assert_eq!(ConnectDecision::Accept.meta(), None);
    }
}
