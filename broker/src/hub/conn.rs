//! [`ConnHandle`]: the hub's view of a connection.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::outbound::{Outbound, Push};
use crate::protocol::EncodedFrame;
use crate::transport::Datagrams;

/// The hub's view of a connection: who it is and where its frames go.
pub struct ConnHandle {
    /// Process-unique key.
    pub key: u64,
    /// The client id sent in `connected` (`c-…`).
    pub client: Box<str>,
    pub user: Arc<str>,
    /// The token's `info` claim.
    pub info: Option<Box<RawValue>>,
    pub outbound: Outbound,
    /// Datagrams for volatile namespaces (WebTransport), beside the queue.
    pub datagrams: Option<Arc<dyn Datagrams>>,
    pub transport: crate::transport::TransportKind,
    pub remote: std::net::SocketAddr,
    /// When the connection authenticated, Unix milliseconds.
    pub connected_at_ms: u64,
}

impl ConnHandle {
    /// Queues `frame`; in a volatile namespace, sends it as a datagram instead when the
    /// connection has them (and the frame fits one).
    pub(super) fn push(&self, frame: &EncodedFrame, volatile: bool) -> Push {
        if volatile
            && let Some(datagrams) = &self.datagrams
            && datagrams.send(frame)
        {
            return Push::Queued;
        }
        self.outbound.push(frame.clone())
    }

    pub(super) fn info_or_empty(&self) -> &RawValue {
        match &self.info {
            Some(info) => info,
            None => empty_object(),
        }
    }
}

fn empty_object() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".into()).expect("valid JSON"))
}

impl crate::outbound::HasOutbound for ConnHandle {
    fn outbound(&self) -> &Outbound {
        &self.outbound
    }
}
