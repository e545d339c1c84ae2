//! A client session: the protocol state machine for one connection, over any [`Transport`].
//!
//! One task per connection runs [`run`]: it waits for `connect`, then selects over inbound
//! frames, its own outbound queue (written in batches, one flush per wake-up), a single
//! timer (keepalive and token expiry) and the node's shutdown token. Requests are handled
//! synchronously (hub and pipeline calls never await), and every reply goes through the
//! same outbound queue as publications, so the writer is the only one touching the socket.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::access;
use crate::auth::{self, Claims};
use crate::channel::{ChannelName, Namespace};
use crate::history::Query;
use crate::hub::ConnHandle;
use crate::limits::{FrameLimiter, UserPermit};
use crate::node::Node;
use crate::outbound::{Next, Outbound};
use crate::plugins::{self, PluginConn};
use crate::protocol::{
    self, CloseCode, Disconnect, EncodedFrame, ErrorCode, ErrorReply, Request, RequestBody,
    StreamPosition,
};
use crate::publish::{PublishRequest, Source};
use crate::transport::{Inbound, Transport};

/// A write batch whose buffer grew past this many frames is given back after the burst.
const SHRINK_ABOVE: usize = 256;

/// What the transport learned while opening the connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `Authorization: Bearer …` from the upgrade request.
    pub bearer: Option<String>,
    /// The transport refuses the connection (a token in the URL, a connection limit):
    /// the session only says so and closes.
    pub refuse: Option<Disconnect>,
    /// When the transport opened; the `connect` deadline counts from here.
    pub opened: Instant,
}

/// How a session ended.
enum Exit {
    /// Send `disconnect` and close with this.
    Disconnect(Disconnect),
    /// Close with 1009, no `disconnect` push (the spec's exception).
    TooLarge,
    /// The client went away (closed, failed, or stopped answering).
    Gone(&'static str),
}

/// Runs a connection to its end.
///
/// Every connection's task holds this future for its whole life, so its size is counted
/// per connection: it is an async block rather than an async fn (whose state keeps its
/// arguments twice), the session lives on the heap, and the short-lived handshake and
/// close futures are boxed.
// Deliberately not `async fn`: see the doc comment (the state's size).
#[allow(clippy::manual_async_fn)]
pub fn run<T: Transport>(
    node: Arc<Node>,
    mut transport: T,
    conn: ConnInfo,
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
        let exit = match Box::pin(handshake(&node, &mut transport, &conn)).await {
            Ok(session) => live(&node, &mut transport, &conn, session).await,
            Err(exit) => exit,
        };
        Box::pin(finish(&node, &mut transport, exit)).await;
        gauge.dec();
    }
}

/// Serves an authenticated session and cleans up after it.
async fn live<T: Transport>(
    node: &Node,
    transport: &mut T,
    conn: &ConnInfo,
    mut session: Box<Session>,
) -> Exit {
    node.registry.insert(session.peer.clone());
    tracing::info!(
        client = %session.peer.client,
        user = %session.peer.user,
        transport = transport.kind().as_str(),
        remote = %conn.remote,
        name = session.name.as_deref().unwrap_or(""),
        "Connected"
    );
    let exit = session.serve(transport).await;
    session.leave_all();
    node.registry.remove(session.peer.key);
    let (code, reason) = match &exit {
        Exit::Disconnect(d) => (d.code.code(), d.reason.to_string()),
        Exit::TooLarge => (1009, "frame too large".to_string()),
        Exit::Gone(why) => (1000, why.to_string()),
    };
    if let Some(view) = &session.conn {
        node.plugins.on_disconnect(view, &reason);
    }
    tracing::info!(
        client = %session.peer.client,
        user = %session.peer.user,
        code,
        reason = %reason,
        secs = session.started.elapsed().as_secs(),
        "Disconnected"
    );
    node.metrics
        .connection_duration
        .observe(session.started.elapsed().as_secs_f64());
    exit
}

/// Sends the `disconnect` push and the close, waiting at most `pong_timeout` for a client
/// that does not read (a slow consumer may never read again; its task must still end).
async fn finish<T: Transport>(node: &Node, transport: &mut T, exit: Exit) {
    match &exit {
        Exit::Disconnect(d) => node.metrics.disconnect(d.code),
        Exit::TooLarge => node.metrics.disconnect(CloseCode::TooLarge),
        Exit::Gone(_) => {}
    }
    let close = async {
        match exit {
            Exit::Disconnect(d) => {
                let mut batch = VecDeque::from([d.encode()]);
                if transport.send(&mut batch).await.is_ok() {
                    transport.close(d.code, &d.reason).await;
                }
            }
            Exit::TooLarge => {
                transport
                    .close(CloseCode::TooLarge, "frame too large")
                    .await
            }
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

fn unauthorized(reason: impl Into<std::borrow::Cow<'static, str>>) -> Exit {
    Exit::Disconnect(Disconnect::new(CloseCode::Unauthorized, reason))
}

/// Waits for a valid `connect` within the deadline and answers `connected`.
async fn handshake<T: Transport>(
    node: &Arc<Node>,
    transport: &mut T,
    conn: &ConnInfo,
) -> Result<Box<Session>, Exit> {
    if let Some(refuse) = &conn.refuse {
        return Err(Exit::Disconnect(refuse.clone()));
    }
    let deadline = conn.opened + node.settings.handshake_timeout;
    let request = loop {
        let inbound = match tokio::time::timeout_at(deadline, transport.recv()).await {
            Ok(inbound) => inbound,
            Err(_) => {
                return Err(unauthorized(format!(
                    "no connect frame within {} ms of opening the connection; send connect first",
                    node.settings.handshake_timeout.as_millis()
                )));
            }
        };
        match inbound {
            Inbound::Text(text) => break protocol::parse_request(&text),
            Inbound::Activity => continue,
            Inbound::Binary => {
                break Err(protocol::ParseError {
                    id: None,
                    message: "binary frames are not part of protocol v1; send connect as a JSON text frame".into(),
                });
            }
            Inbound::TooLarge => return Err(Exit::TooLarge),
            Inbound::Closed => return Err(Exit::Gone("closed before connect")),
        }
    };
    let (id, token, name) = match request {
        Ok(Request {
            id,
            body: RequestBody::Connect { token, name },
        }) => (id, token, name),
        Ok(Request { id, body }) => {
            let err = ErrorReply::new(
                ErrorCode::Unauthorized,
                format!(
                    "`{}` before `connect`: the first frame must be connect",
                    body.kind()
                ),
            );
            send_now(transport, protocol::error_reply(id, &err)).await?;
            return Err(unauthorized(err.message));
        }
        Err(e) => {
            let err = ErrorReply::new(ErrorCode::BadRequest, e.message);
            send_now(transport, protocol::error_reply(e.id, &err)).await?;
            return Err(unauthorized(
                "the first frame must be a valid connect frame",
            ));
        }
    };
    let token = token.or_else(|| conn.bearer.clone());
    let verified = token
        .as_deref()
        .map_or(Err(auth::Error::Missing), |t| node.verifier.verify(t))
        .and_then(|claims| {
            node.revocations.check(&claims, protocol::now_ms() / 1000)?;
            Ok(claims)
        });
    let claims = match verified {
        Ok(claims) => claims,
        Err(e) => {
            node.metrics.auth_failed(e.reason());
            tracing::info!(remote = %conn.remote, reason = e.reason(), "Authentication failed");
            send_now(transport, protocol::error_reply(id, &e.to_reply())).await?;
            let code = match e {
                auth::Error::Revoked { .. } => CloseCode::Forbidden,
                _ => CloseCode::Unauthorized,
            };
            return Err(Exit::Disconnect(Disconnect::new(code, e.to_string())));
        }
    };
    let user: Arc<str> = Arc::from(claims.sub.as_str());
    let user_permit = match node.connections.admit_user(&user) {
        Ok(permit) => permit,
        Err(e) => {
            node.metrics.rate_limited(e.limit);
            return Err(Exit::Disconnect(Disconnect::new(
                CloseCode::TryAgainLater,
                e.message,
            )));
        }
    };
    let key = node.next_key();
    let client: Arc<str> = format!("c-{key:x}-{:04x}", rand::rng().random::<u16>()).into();
    let conn_view = match node.plugins.active() {
        false => None,
        true => {
            let mut view = PluginConn {
                id: key,
                claim_index: Default::default(),
                client: client.clone(),
                user: user.clone(),
                claims: auth::claims_json(token.as_deref().unwrap_or_default()).into(),
                transport: transport.kind(),
                remote: conn.remote.to_string(),
                meta: "{}".into(),
            };
            if let Err(refusal) = node.plugins.on_connect(&mut view) {
                let err = ErrorReply::from(refusal);
                send_now(transport, protocol::error_reply(id, &err)).await?;
                return Err(Exit::Disconnect(Disconnect::new(
                    CloseCode::Forbidden,
                    err.message,
                )));
            }
            Some(Arc::new(view))
        }
    };
    let peer = Arc::new(ConnHandle {
        key,
        client: Box::from(&*client),
        user: user.clone(),
        info: claims.info.clone(),
        outbound: Outbound::new(node.settings.outbound_queue_frames),
        transport: transport.kind(),
        remote: conn.remote,
        connected_at_ms: protocol::now_ms(),
    });
    #[derive(Serialize)]
    struct Connected<'a> {
        client: &'a str,
        user: &'a str,
        expires: u64,
        node: &'a str,
    }
    let reply = protocol::reply(
        id,
        "connected",
        Connected {
            client: &peer.client,
            user: &peer.user,
            expires: claims.exp,
            node: &node.name,
        },
    );
    peer.outbound.push(reply);
    let now = Instant::now();
    Ok(Box::new(Session {
        node: node.clone(),
        expires_at: expiry_instant(claims.exp),
        claims,
        user,
        _user_permit: user_permit,
        frames: node.rate_limits.connection_frames(),
        violations: 0,
        violations_since: now,
        peer,
        subscriptions: HashMap::new(),
        conn: conn_view,
        started: now,
        next_ping: now + node.settings.ping_interval,
        awaiting_pong_since: None,
        name,
    }))
}

/// The `Instant` at which a token with this `exp` (Unix seconds) expires.
fn expiry_instant(exp: u64) -> Instant {
    let now_s = protocol::now_ms() / 1000;
    Instant::now() + Duration::from_secs(exp.saturating_sub(now_s))
}

struct Session {
    node: Arc<Node>,
    peer: Arc<ConnHandle>,
    claims: Claims,
    /// `claims.sub`, shared (the per-user limiter's key).
    user: Arc<str>,
    /// Holds this connection's slot in the per-user count.
    _user_permit: UserPermit,
    /// This connection's frame rate limiter.
    frames: Option<FrameLimiter>,
    /// `rate_limited` errors in the current window, and when the window began.
    violations: u32,
    violations_since: Instant,
    expires_at: Instant,
    subscriptions: HashMap<ChannelName, Arc<Namespace>>,
    /// The connection as plugins see it (`None` when no plugin is loaded).
    conn: Option<Arc<PluginConn>>,
    started: Instant,
    next_ping: Instant,
    awaiting_pong_since: Option<Instant>,
    /// The client's self-chosen name from `connect`, for logs.
    name: Option<String>,
}

impl Session {
    async fn serve<T: Transport>(&mut self, transport: &mut T) -> Exit {
        let mut batch = VecDeque::new();
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                _ = self.node.shutdown.cancelled(), if !draining => {
                    draining = true;
                    let mut d = Disconnect::new(CloseCode::Restart, "the server is restarting; reconnect and recover");
                    d.delay_ms = Some(rand::rng().random_range(500..=self.node.settings.reconnect_jitter_ms.max(500)));
                    self.peer.outbound.close(d);
                }
                next = self.peer.outbound.next_batch(&mut batch) => match next {
                    Next::Frames { probe } => {
                        let written = self.write_batch(transport, &mut batch).await;
                        if let (Ok(()), Some(accepted_at)) = (&written, probe) {
                            self.node.metrics.publish_latency.observe(accepted_at.elapsed().as_secs_f64());
                        }
                        batch.clear();
                        if batch.capacity() > SHRINK_ABOVE {
                            // A burst is over: do not keep its buffer for the life of the connection.
                            batch.shrink_to(0);
                        }
                        if let Err(exit) = written {
                            return exit;
                        }
                    }
                    Next::Close(d) => return Exit::Disconnect(d),
                },
                inbound = transport.recv() => {
                    self.awaiting_pong_since = None;
                    match inbound {
                        Inbound::Text(text) => {
                            if let Err(exit) = self.handle_text(&text) {
                                return exit;
                            }
                        }
                        Inbound::Binary => self.reply_error(None, ErrorReply::new(
                            ErrorCode::BadRequest,
                            "binary frames are not part of protocol v1; send each frame as a JSON text frame",
                        )),
                        Inbound::Activity => {}
                        Inbound::TooLarge => return Exit::TooLarge,
                        Inbound::Closed => return Exit::Gone("closed by client"),
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= self.expires_at {
                        self.peer.outbound.close(Disconnect::new(
                            CloseCode::TokenExpired,
                            "the token expired; send refresh with a new token before exp, or reconnect with one",
                        ));
                        self.expires_at = now + Duration::from_secs(86_400 * 365);
                    }
                    if let Some(since) = self.awaiting_pong_since
                        && now >= since + self.node.settings.pong_timeout
                    {
                        return Exit::Gone("keepalive timeout");
                    }
                    if now >= self.next_ping {
                        // A client whose socket takes not even a ping is not reading.
                        let pong_timeout = self.node.settings.pong_timeout;
                        match tokio::time::timeout(pong_timeout, transport.ping()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Exit::Gone("write failed"),
                            Err(_) => return Exit::Gone("keepalive timeout"),
                        }
                        self.awaiting_pong_since.get_or_insert(now);
                        self.next_ping = now + self.node.settings.ping_interval;
                    }
                    timer.as_mut().reset(self.next_deadline());
                }
            }
        }
    }

    /// Writes a batch. Most writes finish at once (the socket has room); only a write that
    /// has to wait arms the stall timeout and watches for a slow-consumer abort, in a boxed
    /// future, so neither costs anything on the fast path nor in every connection's task.
    async fn write_batch<T: Transport>(
        &self,
        transport: &mut T,
        batch: &mut VecDeque<EncodedFrame>,
    ) -> Result<(), Exit> {
        let mut send = std::pin::pin!(transport.send(batch));
        let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let stuck_limit =
                    self.node.settings.ping_interval + self.node.settings.pong_timeout;
                let outbound = &self.peer.outbound;
                let waited = Box::pin(async move {
                    tokio::select! {
                        r = tokio::time::timeout(stuck_limit, send) => r.map_err(|_| Exit::Gone("write stalled")),
                        _ = outbound.aborted() => {
                            let reason = outbound.abort_reason();
                            Err(Exit::Disconnect(reason.expect("aborted() resolves once there is a reason")))
                        }
                    }
                });
                waited.await?
            }
        };
        result.map_err(|_| Exit::Gone("write failed"))
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.next_ping.min(self.expires_at);
        if let Some(since) = self.awaiting_pong_since {
            at = at.min(since + self.node.settings.pong_timeout);
        }
        at
    }

    fn push(&self, frame: EncodedFrame) {
        self.peer.outbound.push(frame);
    }

    fn reply_error(&self, id: Option<u64>, err: ErrorReply) {
        self.node.metrics.frames_sent("error", 1);
        self.push(protocol::error_reply(id, &err));
    }

    /// Handles one text frame; `Err` when the connection must close (too many violations).
    fn handle_text(&mut self, text: &str) -> Result<(), Exit> {
        let parsed = protocol::parse_request(text);
        let kind = parsed.as_ref().map_or("other", |r| r.body.kind());
        self.node.metrics.frame_received(kind);
        let id = match &parsed {
            Ok(r) => r.id,
            Err(e) => e.id,
        };
        let result = match &self.frames {
            Some(limiter) => limiter.check().map_err(|e| {
                self.node.metrics.rate_limited(e.limit);
                e.to_reply()
            }),
            None => Ok(()),
        }
        .and_then(|()| match parsed {
            Ok(req) => self.handle(req),
            Err(e) => Err(ErrorReply::new(ErrorCode::BadRequest, e.message)),
        });
        let Err(err) = result else { return Ok(()) };
        let limited = err.code == ErrorCode::RateLimited;
        self.reply_error(id, err);
        if limited {
            self.count_violation()?;
        }
        Ok(())
    }

    /// Counts a `rate_limited` answer; too many within the window close the connection.
    fn count_violation(&mut self) -> Result<(), Exit> {
        let limits = &self.node.rate_limits;
        let now = Instant::now();
        if now.duration_since(self.violations_since)
            > Duration::from_millis(limits.violation_window_ms)
        {
            self.violations = 0;
            self.violations_since = now;
        }
        self.violations += 1;
        if self.violations >= limits.max_violations {
            return Err(Exit::Disconnect(Disconnect::new(
                CloseCode::RateLimited,
                format!(
                    "{} rate-limit violations within {} ms; reconnect later and stay under the limits",
                    self.violations, limits.violation_window_ms
                ),
            )));
        }
        Ok(())
    }

    /// Handles one request; success replies are queued here (only when the frame had an id).
    fn handle(&mut self, req: Request) -> Result<(), ErrorReply> {
        let id = req.id;
        match req.body {
            RequestBody::Connect { .. } => {
                Err(ErrorReply::new(ErrorCode::BadRequest, "already connected"))
            }
            RequestBody::Subscribe { channel, recover } => {
                self.subscribe(id, &channel, recover.as_ref())
            }
            RequestBody::Unsubscribe { channel } => {
                let (channel, ns) = access::resolve(&self.node.namespaces, &channel)?;
                if self.subscriptions.remove(&channel).is_some() {
                    self.node.hub.unsubscribe(&ns, &channel, &self.peer);
                }
                self.reply(
                    id,
                    "unsubscribed",
                    Channel {
                        channel: channel.as_str(),
                    },
                );
                Ok(())
            }
            RequestBody::Publish { channel, data, key } => {
                let accepted = self.node.pipeline.publish(PublishRequest {
                    source: Source::Client {
                        client: &self.peer.client,
                        claims: &self.claims,
                        user: &self.user,
                        conn: self.conn.as_ref(),
                    },
                    channel: &channel,
                    data: &data,
                    key: key.as_deref(),
                })?;
                #[derive(Serialize)]
                struct Published<'a> {
                    channel: &'a str,
                    offset: u64,
                }
                self.reply(
                    id,
                    "published",
                    Published {
                        channel: accepted.channel.as_str(),
                        offset: accepted.offset,
                    },
                );
                Ok(())
            }
            RequestBody::History {
                channel,
                limit,
                since,
            } => self.history(id, &channel, limit, since.as_ref()),
            RequestBody::Presence { channel } => {
                let (channel, ns) = access::resolve(&self.node.namespaces, &channel)?;
                access::can_subscribe(&ns, &channel, &self.claims)?;
                if !ns.config.presence {
                    return Err(ErrorReply::new(
                        ErrorCode::NotFound,
                        format!("presence is not enabled in namespace {:?}", ns.name),
                    ));
                }
                #[derive(Serialize)]
                struct Presence<'a> {
                    channel: &'a str,
                    clients: Vec<crate::hub::PresenceEntry>,
                }
                let clients = self.node.hub.presence(&channel);
                self.reply(
                    id,
                    "presence",
                    Presence {
                        channel: channel.as_str(),
                        clients,
                    },
                );
                Ok(())
            }
            RequestBody::Refresh { token } => {
                let claims = self
                    .node
                    .verifier
                    .verify(&token)
                    .and_then(|claims| {
                        self.node
                            .revocations
                            .check(&claims, protocol::now_ms() / 1000)?;
                        Ok(claims)
                    })
                    .map_err(|e| {
                        self.node.metrics.auth_failed(e.reason());
                        e.to_reply()
                    })?;
                if claims.sub != self.claims.sub {
                    let e = auth::Error::SubMismatch {
                        current: self.claims.sub.clone(),
                        new: claims.sub,
                    };
                    return Err(e.to_reply());
                }
                self.expires_at = expiry_instant(claims.exp);
                #[derive(Serialize)]
                struct Refreshed {
                    expires: u64,
                }
                self.reply(
                    id,
                    "refreshed",
                    Refreshed {
                        expires: claims.exp,
                    },
                );
                self.claims = claims;
                if let Some(conn) = &mut self.conn {
                    *conn = Arc::new(conn.with_claims(auth::claims_json(&token).into()));
                }
                tracing::debug!(client = %self.peer.client, user = %self.peer.user, "Token refreshed");
                Ok(())
            }
            RequestBody::Ping => {
                self.reply(id, "pong", Empty {});
                Ok(())
            }
        }
    }

    fn reply<B: Serialize>(&self, id: Option<u64>, kind: &'static str, body: B) {
        if id.is_some() {
            self.node.metrics.frames_sent(kind, 1);
            self.push(protocol::reply(id, kind, body));
        }
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        recover: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        if let Some(conn) = &self.conn {
            self.node
                .plugins
                .on_subscribe(&ns.name, conn, channel.as_str())?;
        }
        if self.subscriptions.contains_key(&channel) {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("already subscribed to {channel}"),
            ));
        }
        if self.subscriptions.len() >= self.node.settings.max_subscriptions {
            return Err(ErrorReply::new(
                ErrorCode::Forbidden,
                format!(
                    "this connection already has {} subscriptions, the limit (limits.max_subscriptions); unsubscribe first",
                    self.subscriptions.len()
                ),
            ));
        }
        self.node
            .hub
            .subscribe(&ns, &channel, &self.peer, id, recover)
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        self.subscriptions.insert(channel, ns);
        Ok(())
    }

    fn history(
        &self,
        id: Option<u64>,
        channel: &str,
        limit: Option<usize>,
        since: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        let limit = limit.unwrap_or(100);
        let query = match since {
            Some(since) => Query::Since { since, limit },
            None => Query::Latest { limit },
        };
        let page = self
            .node
            .hub
            .history_read(&ns, &channel, query)
            .map_err(|e| ErrorReply::new(ErrorCode::NotFound, e.to_string()))?;
        #[derive(Serialize)]
        struct Head<'a> {
            channel: &'a str,
            offset: u64,
            epoch: &'a str,
        }
        if id.is_none() {
            return Ok(());
        }
        let (offset, epoch, publications) = match &page {
            Some(p) => (
                p.position.offset,
                &*p.position.epoch,
                p.publications.as_slice(),
            ),
            None => (0, "", &[][..]),
        };
        let head = Head {
            channel: channel.as_str(),
            offset,
            epoch,
        };
        self.push(protocol::reply_with_publications(
            id,
            "history",
            head,
            publications,
        ));
        Ok(())
    }

    /// Leaves every channel (join/leave pushes go to the others).
    fn leave_all(&mut self) {
        for (channel, ns) in self.subscriptions.drain() {
            self.node.hub.unsubscribe(&ns, &channel, &self.peer);
        }
    }
}

#[derive(Serialize)]
struct Channel<'a> {
    channel: &'a str,
}

#[derive(Serialize)]
struct Empty {}

#[cfg(test)]
mod tests;
