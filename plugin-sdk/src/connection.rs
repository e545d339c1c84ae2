use serde_json::Value;

use crate::Transport;
use crate::bindings::hookwire::plugin::types as wit;

/// A client connection, as hooks see it, with its JSON parsed.
///
/// Build one in tests with [`Connection::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Connection {
    /// Broker-unique connection id, stable for the connection's life.
    pub id: u64,
    /// The client id the broker gave the connection.
    pub client: String,
    /// The authenticated user: the token's `sub`.
    pub user: String,
    /// The token's claims, a JSON object.
    pub claims: Value,
    /// How the client reached the broker.
    pub transport: Transport,
    /// Remote address as text, e.g. `203.0.113.7:51234`.
    pub remote_addr: String,
    /// Metadata attached by `on_connect` hooks, a JSON object (`{}` when none).
    pub meta: Value,
}

impl Connection {
    /// A WebSocket connection of `user` whose claims are `{"sub": user}`, for tests.
    pub fn new(user: impl Into<String>) -> Self {
        let user = user.into();
        Self {
            id: 1,
            client: format!("client-of-{user}"),
            claims: serde_json::json!({ "sub": user }),
            user,
            transport: Transport::Websocket,
            remote_addr: "127.0.0.1:50000".to_owned(),
            meta: Value::Object(Default::default()),
        }
    }

    /// Replaces the claims (a JSON object).
    pub fn with_claims(mut self, claims: Value) -> Self {
        self.claims = claims;
        self
    }

    /// Replaces the metadata (a JSON object).
    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = meta;
        self
    }

    /// Replaces the connection id.
    pub fn with_id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// Replaces the client id.
    pub fn with_client(mut self, client: impl Into<String>) -> Self {
        self.client = client.into();
        self
    }

    /// Replaces the transport.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Replaces the remote address.
    pub fn with_remote_addr(mut self, remote_addr: impl Into<String>) -> Self {
        self.remote_addr = remote_addr.into();
        self
    }

    /// One claim of the token, e.g. `conn.claim("role")`.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
}

impl From<wit::Connection> for Connection {
    fn from(conn: wit::Connection) -> Self {
        Self {
            id: conn.id,
            client: conn.client,
            user: conn.user,
            claims: parse_object(&conn.claims),
            transport: conn.transport,
            remote_addr: conn.remote_addr,
            meta: parse_object(&conn.meta),
        }
    }
}

/// The broker always sends JSON text here; should it not, hooks see `null` (no
/// claim matches) rather than the instance trapping.
pub(crate) fn parse_object(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_the_wit_record_and_parses_its_json() {
        let conn = Connection::from(wit::Connection {
            id: 7,
            client: "c7".into(),
            user: "alice".into(),
            claims: r#"{"sub":"alice","role":"admin"}"#.into(),
            transport: Transport::Webtransport,
            remote_addr: "[::1]:9000".into(),
            meta: "{}".into(),
        });
        assert_eq!(conn.claim("role"), Some(&json!("admin")));
        assert_eq!(conn.claim("missing"), None);
        assert_eq!(conn.meta, json!({}));
        assert_eq!(conn.transport, Transport::Webtransport);
    }

    #[test]
    fn claims_that_are_not_json_read_as_null() {
        let conn = Connection::from(wit::Connection {
            id: 1,
            client: String::new(),
            user: String::new(),
            claims: "not json".into(),
            transport: Transport::Other,
            remote_addr: String::new(),
            meta: "{".into(),
        });
        assert_eq!(conn.claims, Value::Null);
        assert_eq!(conn.claim("role"), None);
        assert_eq!(conn.meta, Value::Null);
    }
}
