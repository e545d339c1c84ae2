//! `[limits]`, `[rate_limits]` and `[connections]`: the config sections the edge and the
//! sessions enforce, with their validation.

use serde::{Deserialize, Serialize};

use crate::rate::{Cap, Rate};
use crate::validation::Problems;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest client frame; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Time from transport open to a successful `connect`, else close 4001. Also bounds
    /// the HTTP upgrade itself.
    pub handshake_timeout_ms: u64,
    /// Server keepalive ping interval.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long after a ping is closed.
    pub pong_timeout_ms: u64,
    /// Frames queued for one connection before it counts as a slow consumer (4009).
    pub outbound_queue_frames: usize,
    /// Bytes queued for one connection (behind the batch being written) before it counts
    /// as a slow consumer (4009).
    pub outbound_queue_bytes: usize,
    /// Bytes one WebSocket read takes from the socket at most, into the worker thread's
    /// buffer (a connection keeps only what it has not handled yet).
    pub read_buffer_bytes: usize,
    /// Bytes of queued WebSocket frames gathered, in the worker thread's buffer, into one
    /// write (at least 4 KiB); a larger frame is written on its own, without a copy.
    pub write_buffer_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bytes of publications (or presence entries) in one `history`, `subscribed` or
    /// `presence` reply; a longer answer is cut and says `"more": true`.
    pub max_reply_bytes: usize,
    /// A publish repeating an idempotency `key` within this window is not delivered again.
    pub dedup_window_ms: u64,
    /// Idempotency keys remembered at once, node-wide; past it the oldest are forgotten
    /// first (counted in `hookwire_dedup_evictions_total`).
    pub dedup_max_keys: usize,
}

/// Rates are per second with a burst above them; 0 turns a limit off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Frames one connection may send.
    pub connection_frames_per_sec: Rate,
    pub connection_frames_burst: u32,
    /// `subscribe` and `unsubscribe` requests one connection may send (each one can make
    /// every member of a channel receive a `join` or `leave`).
    pub connection_subscribes_per_sec: Rate,
    pub connection_subscribes_burst: u32,
    /// `join` and `leave` pushes one channel sends its members; past it they are skipped
    /// (`presence` stays exact) and counted.
    pub channel_join_leave_per_sec: Rate,
    pub channel_join_leave_burst: u32,
    /// Publishes one user may make, across all of that user's connections.
    pub user_publishes_per_sec: Rate,
    pub user_publishes_burst: u32,
    /// New connections from one source IP.
    pub ip_connects_per_sec: Rate,
    pub ip_connects_burst: u32,
    /// Publishes into one channel, from every source (a namespace may override).
    pub channel_publishes_per_sec: Rate,
    pub channel_publishes_burst: u32,
    /// A connection that gets this many `rate_limited` errors within `violation_window_ms`
    /// is sent `disconnect` 4008 and closed.
    pub max_violations: u32,
    pub violation_window_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Connections this node accepts; the next gets close 1013 (0: no limit).
    pub max: Cap,
    /// Connections one user may hold at once (0: no limit).
    pub max_per_user: Cap,
    /// Connections from one source IP at once (0: no limit).
    pub max_per_ip: Cap,
    /// Connections still in their handshake (TCP accepted, upgrade and `connect` not yet
    /// done) on this node; the next is closed at once (0: no limit).
    pub max_handshakes: Cap,
    /// Handshakes in progress from one source IP (0: no limit).
    pub max_handshakes_per_ip: Cap,
    /// Origins browsers may connect from: exact (`https://app.example.com`) or with `*`
    /// as a whole leading label (`https://*.example.com`) or as the port
    /// (`http://localhost:*`). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Whether clients that send no `Origin` (non-browser clients) are accepted.
    pub allow_missing_origin: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            handshake_timeout_ms: 5_000,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            outbound_queue_frames: 4_096,
            outbound_queue_bytes: 1 << 20,
            read_buffer_bytes: 65_536,
            write_buffer_bytes: 65_536,
            max_subscriptions: 1_024,
            max_reply_bytes: 256 << 10,
            dedup_window_ms: 120_000,
            dedup_max_keys: 100_000,
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            connection_frames_per_sec: Rate::new(200),
            connection_frames_burst: 400,
            connection_subscribes_per_sec: Rate::new(20),
            connection_subscribes_burst: 50,
            channel_join_leave_per_sec: Rate::new(20),
            channel_join_leave_burst: 40,
            user_publishes_per_sec: Rate::new(100),
            user_publishes_burst: 200,
            ip_connects_per_sec: Rate::new(50),
            ip_connects_burst: 200,
            channel_publishes_per_sec: Rate::new(2_000),
            channel_publishes_burst: 4_000,
            max_violations: 20,
            violation_window_ms: 10_000,
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max: Cap::new(100_000),
            max_per_user: Cap::new(100),
            max_per_ip: Cap::new(5_000),
            max_handshakes: Cap::new(1_000),
            max_handshakes_per_ip: Cap::new(100),
            allowed_origins: vec![
                "http://localhost".into(),
                "http://localhost:*".into(),
                "http://127.0.0.1".into(),
                "http://127.0.0.1:*".into(),
            ],
            allow_missing_origin: true,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.range(
            "limits.max_frame_bytes",
            self.max_frame_bytes as u64,
            256,
            16 << 20,
        );
        p.range(
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            120_000,
        );
        p.range(
            "limits.ping_interval_ms",
            self.ping_interval_ms,
            100,
            600_000,
        );
        p.range("limits.pong_timeout_ms", self.pong_timeout_ms, 100, 600_000);
        p.range(
            "limits.outbound_queue_frames",
            self.outbound_queue_frames as u64,
            16,
            1 << 20,
        );
        p.range(
            "limits.outbound_queue_bytes",
            self.outbound_queue_bytes as u64,
            4_096,
            1 << 30,
        );
        p.range(
            "limits.read_buffer_bytes",
            self.read_buffer_bytes as u64,
            256,
            1 << 20,
        );
        p.range(
            "limits.write_buffer_bytes",
            self.write_buffer_bytes as u64,
            0,
            16 << 20,
        );
        p.range(
            "limits.max_subscriptions",
            self.max_subscriptions as u64,
            1,
            1 << 20,
        );
        // At most the 8 MiB the WebSocket write buffer may hold beyond write_buffer_bytes.
        p.range(
            "limits.max_reply_bytes",
            self.max_reply_bytes as u64,
            4_096,
            8 << 20,
        );
        if self.max_reply_bytes > self.outbound_queue_bytes / 2 {
            p.push(format!(
                "limits.max_reply_bytes = {}: must be at most half of limits.outbound_queue_bytes ({}), so a reply fits beside a reader's live traffic",
                self.max_reply_bytes, self.outbound_queue_bytes
            ));
        }
        p.range(
            "limits.dedup_window_ms",
            self.dedup_window_ms,
            0,
            86_400_000,
        );
        p.range(
            "limits.dedup_max_keys",
            self.dedup_max_keys as u64,
            16,
            100_000_000,
        );
    }
}

impl RateLimitsConfig {
    pub fn validate(&self, p: &mut Problems) {
        for (key, rate, burst) in [
            (
                "connection_frames",
                self.connection_frames_per_sec,
                self.connection_frames_burst,
            ),
            (
                "user_publishes",
                self.user_publishes_per_sec,
                self.user_publishes_burst,
            ),
            (
                "ip_connects",
                self.ip_connects_per_sec,
                self.ip_connects_burst,
            ),
            (
                "connection_subscribes",
                self.connection_subscribes_per_sec,
                self.connection_subscribes_burst,
            ),
            (
                "channel_join_leave",
                self.channel_join_leave_per_sec,
                self.channel_join_leave_burst,
            ),
            (
                "channel_publishes",
                self.channel_publishes_per_sec,
                self.channel_publishes_burst,
            ),
        ] {
            p.rate_and_burst(&format!("rate_limits.{key}"), rate, burst);
        }
        p.range(
            "rate_limits.max_violations",
            u64::from(self.max_violations),
            1,
            1_000_000,
        );
        p.range(
            "rate_limits.violation_window_ms",
            self.violation_window_ms,
            100,
            3_600_000,
        );
    }
}

impl ConnectionsConfig {
    pub fn validate(&self, p: &mut Problems) {
        for origin in &self.allowed_origins {
            if let Err(why) = check_origin_pattern(origin) {
                p.push(format!(
                    "connections.allowed_origins has {origin:?}: {why}; an origin is scheme://host[:port] with no path, e.g. \"https://app.example.com\", \"https://*.example.com\" or \"http://localhost:*\""
                ));
            }
        }
    }
}

/// An allowed-origin pattern: `http(s)://host[:port]`, where `*` may only be the whole
/// first label of the host (`*.example.com`) or the whole port (`:*`). A `*` inside a
/// label (`https://*example.com`) would also match `https://evil-example.com`.
fn check_origin_pattern(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("the scheme must be http:// or https://")?;
    if rest.contains('/') {
        return Err("it has a path");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, _)) if !host.ends_with(']') && host.contains(':') => (rest, None),
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    if let Some(port) = port
        && port != "*"
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the port must be a number or `*`");
    }
    let labels = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty() || labels.is_empty() {
        return Err("the host is empty");
    }
    if labels.contains('*') {
        return Err("`*` may only be a whole leading label (`*.example.com`) or the port (`:*`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns_put_the_wildcard_at_a_label_boundary_or_the_port() {
        for ok in [
            "https://app.example.com",
            "https://*.example.com",
            "http://localhost:*",
            "http://localhost:8080",
            "http://127.0.0.1:*",
            "http://[::1]:*",
            "https://*.example.com:*",
        ] {
            assert_eq!(check_origin_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://*example.com",
            "https://app*.example.com",
            "https://*",
            "https://*.",
            "https://app.*.com",
            "https://example.com/",
            "https://example.com:8*",
            "https://example.com:",
            "ftp://example.com",
            "https://",
        ] {
            assert!(check_origin_pattern(bad).is_err(), "{bad}");
        }
        let mut p = Problems::default();
        ConnectionsConfig {
            allowed_origins: vec!["https://*example.com".into()],
            ..ConnectionsConfig::default()
        }
        .validate(&mut p);
        assert!(p.into_result().is_err());
    }
}
