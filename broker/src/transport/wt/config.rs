//! `[quic]`: the WebTransport listener (HTTP/3 over QUIC), its TLS and its QUIC limits,
//! with their validation.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

/// `[quic]`: the WebTransport listener. It runs when a certificate is configured, or
/// with `--dev` (a self-signed one); otherwise it stays off and the log says so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Turn the listener off even when a certificate is available.
    pub enabled: bool,
    /// UDP address, path `/wt`. `HOOKWIRE_QUIC_ADDR`.
    #[serde(deserialize_with = "crate::config::listen_addr")]
    pub addr: SocketAddr,
    /// PEM certificate chain and private key (both or neither).
    pub cert_file: String,
    pub key_file: String,
    /// Accept 0-RTT data (replayable by an attacker: off unless you know why).
    pub zero_rtt: bool,
    /// Streams a client may open at once: bidirectional (the protocol uses one) and
    /// unidirectional (HTTP/3 needs three of its own).
    pub max_bidi_streams: u32,
    pub max_uni_streams: u32,
    /// Flow-control windows: what a client may send ahead on one stream, and on the
    /// whole connection.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// A connection that hears nothing for this long is closed (QUIC idle timeout).
    pub idle_timeout_ms: u64,
    /// The server sends a QUIC PING after this much quiet (keeps NAT bindings and the
    /// idle timer alive; 0: never).
    pub keep_alive_ms: u64,
    /// The largest datagram payload a volatile publication may need; a publication into
    /// a volatile namespace whose `message` frame is larger is refused (`too_large`).
    pub max_datagram_bytes: usize,
    /// Datagrams waiting to leave one connection, in bytes; past it the oldest are
    /// dropped (they are volatile).
    pub datagram_send_buffer_bytes: usize,
    /// QUIC handshakes waiting to be accepted, node-wide.
    pub max_pending_handshakes: u32,
    /// The UDP socket's receive and send buffers (the kernel caps them at
    /// net.core.rmem_max / wmem_max). A small buffer drops datagrams under bursts, and
    /// QUIC then backs off and resends.
    pub udp_buffer_bytes: usize,
    /// The largest UDP payload path MTU discovery tries (1200 is always safe; a path
    /// that takes less than what is tried is found by probing). Each connection keeps
    /// a transmit buffer of the largest packet it built.
    pub max_udp_payload_bytes: u16,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 4433)),
            cert_file: String::new(),
            key_file: String::new(),
            zero_rtt: false,
            max_bidi_streams: 4,
            max_uni_streams: 8,
            stream_window_bytes: 256 << 10,
            connection_window_bytes: 1 << 20,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 10_000,
            max_datagram_bytes: 1_100,
            datagram_send_buffer_bytes: 64 << 10,
            max_pending_handshakes: 1_024,
            udp_buffer_bytes: 4 << 20,
            max_udp_payload_bytes: 1452,
        }
    }
}

impl QuicConfig {
    pub fn validate(&self, p: &mut Problems) {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            p.push("quic.cert_file and quic.key_file: set both (PEM files) or neither");
        }
        p.range(
            "quic.max_bidi_streams",
            self.max_bidi_streams.into(),
            1,
            1_000,
        );
        p.range(
            "quic.max_uni_streams",
            self.max_uni_streams.into(),
            3,
            1_000,
        );
        p.range(
            "quic.stream_window_bytes",
            self.stream_window_bytes.into(),
            4 << 10,
            64 << 20,
        );
        p.range(
            "quic.connection_window_bytes",
            self.connection_window_bytes.into(),
            u64::from(self.stream_window_bytes),
            256 << 20,
        );
        p.range("quic.idle_timeout_ms", self.idle_timeout_ms, 1_000, 600_000);
        if self.keep_alive_ms >= self.idle_timeout_ms {
            p.push(format!(
                "quic.keep_alive_ms = {} must be below quic.idle_timeout_ms = {} (0 turns it off)",
                self.keep_alive_ms, self.idle_timeout_ms
            ));
        }
        // A QUIC packet is at least 1200 bytes; a datagram frame and the session id
        // take a few of them.
        p.range(
            "quic.max_datagram_bytes",
            self.max_datagram_bytes as u64,
            200,
            1_150,
        );
        p.range(
            "quic.datagram_send_buffer_bytes",
            self.datagram_send_buffer_bytes as u64,
            2 << 10,
            16 << 20,
        );
        p.range(
            "quic.udp_buffer_bytes",
            self.udp_buffer_bytes as u64,
            64 << 10,
            256 << 20,
        );
        p.range(
            "quic.max_udp_payload_bytes",
            self.max_udp_payload_bytes.into(),
            1200,
            65_527,
        );
        p.range(
            "quic.max_pending_handshakes",
            self.max_pending_handshakes.into(),
            1,
            1_000_000,
        );
    }
}
