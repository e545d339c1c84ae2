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
    pub client: ClientId,
    pub user: Arc<str>,
    /// The token's `info` claim.
    pub info: Option<Box<RawValue>>,
    pub outbound: Outbound,
    /// Datagrams for volatile namespaces (WebTransport), beside the queue.
    /// (Boxed: a thin pointer, 8 bytes less in every connection; only WebTransport ones
    /// have datagrams.)
    #[allow(clippy::redundant_allocation)]
    pub datagrams: Option<Box<Arc<dyn Datagrams>>>,
    pub transport: crate::transport::TransportKind,
    /// The peer's address, apart ([`ConnHandle::remote`]): a `SocketAddr` keeps room for
    /// IPv6 flow and scope ids, 16 bytes more in every connection.
    pub remote_ip: std::net::IpAddr,
    pub remote_port: u16,
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

    /// The peer's address.
    pub fn remote(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.remote_ip, self.remote_port)
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

/// A client id (`c-<key in hex>-<4 hex digits>`: at most 23 bytes), kept inline: it sits
/// in every connection's handle, where a heap copy cost an allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    len: u8,
    bytes: [u8; ClientId::MAX],
}

impl ClientId {
    pub const MAX: usize = 23;

    /// `None` when `id` is longer than [`ClientId::MAX`] bytes.
    pub fn new(id: &str) -> Option<Self> {
        let mut bytes = [0; Self::MAX];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(Self {
            len: id.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("made from a str")
    }
}

impl std::ops::Deref for ClientId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl crate::outbound::HasOutbound for ConnHandle {
    fn outbound(&self) -> &Outbound {
        &self.outbound
    }
}

#[cfg(test)]
mod tests {
    use super::ClientId;

    #[test]
    fn a_client_id_holds_the_longest_the_broker_makes() {
        let longest = format!("c-{:x}-{:04x}", u64::MAX, u16::MAX);
        assert_eq!(longest.len(), ClientId::MAX);
        let id = ClientId::new(&longest).unwrap();
        assert_eq!((id.as_str(), id.to_string()), (&*longest, longest.clone()));
        assert_eq!(&*ClientId::new("c-1-0001").unwrap(), "c-1-0001");
        assert!(ClientId::new(&format!("{longest}0")).is_none());
    }
}
