//! A client session: the protocol state machine for one connection, over any [`Transport`].
//!
//! A task per connection runs [`run`]: it waits for `connect`, then selects over inbound
//! frames and its own outbound queue (written in batches, one flush per wake-up; shutdown
//! arrives there too, as a 1012 close, and so does its timer, keepalive and token expiry,
//! from the node's one ticker: [`tick`]). A session with nothing to do parks: it gives
//! its task up until the socket or the queue wakes it ([`park`]).
//! Requests are handled
//! synchronously (hub and pipeline calls never await), except one that must run a plugin
//! chain: the session awaits it on the plugin threads before reading on. Every reply
//! goes through the same outbound queue as publications, so the writer is the only one
//! touching the socket.
//!
//! ```text
//! session        run → handshake → enter → Live::start (park, or a task: Live::run, serve, park) → leave → finish
//!   handshake    first frame, token, per-user count, connect plugins, `connected`
//!   park         Live: the session between its handshake and its end; parking
//!   serve        the select! loop: outbound batches (and the timer), inbound
//!   requests     one handler per request kind (subscribe, publish, history, …)
//! ```

mod handshake;
mod hooked;
mod park;
mod requests;
mod serve;
mod subscriptions;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::auth::Claims;
use crate::hub::ConnHandle;
use crate::limits::{ConnectionLimiter, ConnectionPermit, HandshakePermit, UserPermit};
use crate::node::Node;
use crate::plugins::PluginConn;
use crate::protocol::{self, CloseCode, Disconnect, EncodedFrame, ErrorReply};
use crate::transport::{Inbound, Keepalive, Transport};
use handshake::handshake;

/// What the transport learned while opening the connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `Authorization: Bearer …` from the upgrade request.
    pub bearer: Option<String>,
    /// The transport refuses the connection (a token in the URL, a connection limit):
    /// the session only says so and closes. (Boxed: rare, and its room would sit in
    /// every connection's task.)
    pub refuse: Option<Box<Disconnect>>,
    /// When the transport opened; the `connect` deadline counts from here.
    pub opened: Instant,
    /// The connection's slot among handshakes in progress, given back once `connect`
    /// succeeded (or failed).
    pub handshake: Option<HandshakePermit>,
    /// The connection's place in `connections.max` and `max_per_ip`, given back when the
    /// session ends (`None`: refused, or a test).
    pub admitted: Option<ConnectionPermit>,
}

/// How a session ended.
enum Exit {
    /// Send `disconnect` and close with this.
    Disconnect(Disconnect),
    /// Close with this code and reason, no `disconnect` push: the client broke the
    /// framing (1009 too large, 1002 protocol error, 1007 invalid UTF-8), so the close
    /// frame alone answers it (the spec's exception).
    Close(CloseCode, String),
    /// The client went away (closed, failed, or stopped answering).
    Gone(&'static str),
}

/// Wakes the sessions whose timer is due, every `period` until the node shuts down: one
/// task for the node instead of a timer per connection. A deadline is met within a period
/// ([`tick_period`]).
pub async fn tick(node: Arc<Node>) {
    let mut every = tokio::time::interval(tick_period(&node));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        node.registry.tick(crate::clock::now_ms());
    }
}

/// How often [`tick`] looks: an eighth of the shortest keepalive setting, between 10 ms
/// and 500 ms (so with the defaults a ping or an expiry is at most half a second late).
pub fn tick_period(node: &Node) -> Duration {
    let s = &node.settings;
    (s.ping_interval.min(s.pong_timeout) / 8)
        .clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// Runs a connection to its end.
///
/// The connection's first task runs the handshake, then parks the session or hands it
/// to a task of its own ([`park::Live::start`]); that task parks it while idle. Both
/// futures' sizes count per busy connection: they are async blocks rather than async fns
/// (whose state keeps its arguments twice), the session lives on the heap, and the
/// short-lived handshake and close futures are boxed.
// Deliberately not `async fn`: see the doc comment (the state's size).
#[allow(clippy::manual_async_fn)]
pub fn run<T: Transport + 'static>(
    node: Arc<Node>,
    mut transport: T,
    mut conn: ConnInfo,
) -> impl Future<Output = ()> + Send {
    async move {
        let gauge = node
            .metrics
            .connections
            .with_label_values(&[transport.kind().as_str()]);
        gauge.inc();
        node.metrics
            .connections_total
            .with_label_values(&[transport.kind().as_str()])
            .inc();
        // The handshake's slot is given back as soon as it is over, either way.
        let handshake = Box::pin(handshake(&node, &mut transport, &conn)).await;
        drop(conn.handshake.take());
        match handshake {
            // Not in this task, whose state is mostly the handshake's: the session parks
            // at once, or gets a task of its own (see `park`), so nothing idle keeps it.
            Ok(session) => enter(node, transport, conn, session).start(),
            Err(exit) => {
                Box::pin(finish(&node, &mut transport, exit)).await;
                gauge.dec();
            }
        }
    }
}

/// Registers an authenticated session; what serves it from here on.
fn enter<T: Transport>(
    node: Arc<Node>,
    transport: T,
    conn: ConnInfo,
    mut session: Box<Session>,
) -> park::Live<T> {
    if transport.keepalive() == Keepalive::Transport {
        // Never due: the transport has its own idle timeout and keep-alive.
        session.next_ping_ms = u64::MAX;
    }
    node.registry.insert(session.handle.clone());
    if node.draining() {
        // Registered after shutdown walked the registry (see `Node::begin_shutdown`).
        session.handle.outbound.close(node.restart_disconnect());
    }
    park::Live {
        node,
        transport,
        session,
        _admitted: conn.admitted,
    }
}

/// Sends the `disconnect` push and the close, waiting at most `pong_timeout` for a client
/// that does not read (a slow consumer may never read again; its task must still end).
async fn finish<T: Transport>(node: &Node, transport: &mut T, exit: Exit) {
    match &exit {
        Exit::Disconnect(d) => node.metrics.disconnect(d.code),
        Exit::Close(code, _) => node.metrics.disconnect(*code),
        Exit::Gone(_) => {}
    }
    let close = async {
        match exit {
            Exit::Disconnect(d) => {
                // Half the time for the push (a client that does not read may never take
                // it), then the close: a transport with a close of its own (WebTransport's
                // capsule) still says the code and reason.
                let mut batch = VecDeque::from([d.encode()]);
                let push = transport.send(&mut batch);
                let _ = tokio::time::timeout(node.settings.pong_timeout / 2, push).await;
                transport.close(d.code, &d.reason).await;
            }
            Exit::Close(code, reason) => transport.close(code, &reason).await,
            Exit::Gone(_) => {}
        }
    };
    let _ = tokio::time::timeout(node.settings.pong_timeout, close).await;
}

async fn send_now<T: Transport>(transport: &mut T, frame: EncodedFrame) -> Result<(), Exit> {
    let mut batch = VecDeque::from([frame]);
    transport
        .send(&mut batch)
        .await
        .map_err(|_| Exit::Gone("write failed"))
}

/// The exit for a frame the transport could not accept (too large, broken, not UTF-8).
/// An inbound text as `&str`: `Err` (close 1007) when it is not UTF-8 (a WebSocket
/// transport checked that already; a stream transport's lines are checked here).
fn utf8_text(text: &[u8]) -> Result<&str, Exit> {
    std::str::from_utf8(text).map_err(|_| {
        Exit::Close(
            CloseCode::InvalidData,
            "a text frame is not valid UTF-8".into(),
        )
    })
}

fn refused_frame(inbound: Inbound) -> Exit {
    match inbound {
        Inbound::TooLarge => Exit::Close(CloseCode::TooLarge, "frame too large".into()),
        Inbound::Invalid(code, reason) => Exit::Close(code, reason),
        _ => Exit::Gone("closed by client"),
    }
}

fn unauthorized(reason: impl Into<std::borrow::Cow<'static, str>>) -> Exit {
    Exit::Disconnect(Disconnect::new(CloseCode::Unauthorized, reason))
}

/// Longest a token is honoured, whatever its `exp` says (a signed token may carry any
/// number; adding a huge one to the clock would overflow).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 86_400);

/// When ([`crate::clock`] ms) a token with this `exp` (Unix seconds) expires.
fn expiry_ms(exp: u64) -> u64 {
    let now_s = protocol::now_ms() / 1000;
    let life = Duration::from_secs(exp.saturating_sub(now_s)).min(MAX_TOKEN_LIFE);
    crate::clock::now_ms() + crate::clock::duration_ms(life)
}

/// One authenticated connection's protocol state, owned by its task.
struct Session {
    node: Arc<Node>,
    /// The shared part of the connection: what the hub and the registry hold.
    handle: Arc<ConnHandle>,
    claims: Claims,
    /// Holds this connection's slot in the per-user count.
    _user_permit: UserPermit,
    /// This connection's frame rate limiter.
    frames: Option<ConnectionLimiter>,
    /// This connection's subscribe/unsubscribe limiter.
    subscribes: Option<ConnectionLimiter>,
    /// `rate_limited` errors in the current window, and when the window began.
    violations: u32,
    /// The times below are [`crate::clock`] milliseconds (8 bytes, not an `Instant`'s
    /// 16: this sits in every connection).
    violations_since_ms: u64,
    expires_at_ms: u64,
    subscriptions: subscriptions::Subscriptions,
    /// The connection as plugins see it (`None` when no plugin is loaded).
    plugin_conn: Option<Arc<PluginConn>>,
    started_ms: u64,
    next_ping_ms: u64,
    /// A ping went out then and no pong came yet (0: none outstanding).
    awaiting_pong_since_ms: u64,
    /// When the session last resumed after parking ([`crate::clock`] ms; 0: never).
    last_resumed_ms: u64,
    /// Resumed twice within a short while: it keeps its task instead of parking until
    /// [`park::STAY_AWAKE_MS`] after `last_resumed_ms`.
    busy: bool,
}

impl Session {
    fn push(&self, frame: EncodedFrame) {
        self.handle.outbound.push(frame);
    }

    fn reply_error(&self, id: Option<u64>, err: ErrorReply) {
        self.node.metrics.frames_sent("error", 1);
        self.push(protocol::error_reply(id, &err));
    }

    fn reply<B: Serialize>(&self, id: Option<u64>, kind: &'static str, body: B) {
        if id.is_some() {
            self.node.metrics.frames_sent(kind, 1);
            self.push(protocol::reply(id, kind, body));
        }
    }

    /// Leaves every channel (join/leave pushes go to the others).
    fn leave_all(&mut self) {
        for (channel, ns) in self.subscriptions.take_all() {
            self.node.hub.unsubscribe(&ns, &channel, &self.handle);
        }
    }
}

#[cfg(test)]
mod tests;
