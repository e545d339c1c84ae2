//! The start of a session: the first frame must be a valid `connect` within the deadline;
//! then the token, the per-user connection count and the connect plugins decide, and the
//! `connected` reply is queued.

use std::borrow::Cow;
use std::sync::Arc;

use rand::Rng;
use serde::Serialize;

use super::{ConnInfo, Exit, Session, refused_frame, send_now, unauthorized};
use crate::auth::{self, Claims};
use crate::hub::ConnHandle;
use crate::limits::UserPermit;
use crate::node::Node;
use crate::outbound::Outbound;
use crate::plugins::{Hook, PluginConn};
use crate::protocol::{
    self, CloseCode, Disconnect, ErrorCode, ErrorReply, ParseError, Request, RequestBody,
};
use crate::transport::{Inbound, Transport};

/// What the `connect` frame said.
struct Connect {
    id: Option<u64>,
    token: Option<String>,
    name: Option<String>,
}

/// The first frame, kept past its buffer: a `connect`, or what came instead (answered,
/// then closed, by [`expect_connect`]).
enum First {
    Connect(Connect),
    Other { id: Option<u64>, kind: &'static str },
    Invalid(ParseError),
}

/// Waits for a valid `connect` within the deadline and answers `connected`.
pub(super) async fn handshake<T: Transport>(
    node: &Arc<Node>,
    transport: &mut T,
    conn: &ConnInfo,
) -> Result<Box<Session>, Exit> {
    if let Some(refuse) = &conn.refuse {
        return Err(Exit::Disconnect(Disconnect::clone(refuse)));
    }
    let first = first_frame(node, transport, conn).await?;
    let connect = expect_connect(transport, first).await?;
    let token = connect.token.clone().or_else(|| conn.bearer.clone());
    let claims = authenticate(node, transport, conn, connect.id, token.as_deref()).await?;
    let user: Arc<str> = claims.sub.clone();
    let user_permit = node.connections.admit_user(&user).map_err(|e| {
        node.metrics.rate_limited(e.limit);
        Exit::Disconnect(Disconnect::new(CloseCode::TryAgainLater, e.message))
    })?;
    let key = node.next_key();
    let client: Arc<str> = format!("c-{key:x}-{:04x}", rand::rng().random::<u16>()).into();
    let plugin_conn = match node.plugins.active() {
        false => None,
        true => {
            let view = PluginConn {
                id: key,
                claim_index: Default::default(),
                client: client.clone(),
                user: user.clone(),
                claims: auth::claims_json(token.as_deref().unwrap_or_default()).into(),
                transport: transport.kind(),
                remote: conn.remote.to_string(),
                meta: "{}".into(),
            };
            Some(run_connect_plugins(node, transport, connect.id, view).await?)
        }
    };
    let handle = Arc::new(ConnHandle {
        key,
        client: crate::hub::ClientId::new(&client).expect("a client id fits"),
        user: user.clone(),
        info: claims.info.clone(),
        outbound: Outbound::new(
            node.settings.outbound_queue_frames,
            node.settings.outbound_queue_bytes,
        )
        .with_direct(transport.direct(), &node.metrics.publish_latency),
        datagrams: transport.datagrams().map(Box::new),
        transport: transport.kind(),
        remote_ip: conn.remote.ip(),
        remote_port: conn.remote.port(),
        connected_at_ms: protocol::now_ms(),
    });
    handle
        .outbound
        .push(connected_reply(node, &handle, connect.id, claims.exp));
    // Said here, where the client's self-chosen name is at hand (the session keeps
    // none: it is for this line).
    tracing::info!(
        client = %handle.client,
        user = &*handle.user,
        transport = transport.kind().as_str(),
        remote = %conn.remote,
        name = connect.name.as_deref().unwrap_or(""),
        "Connected"
    );
    Ok(new_session(node, handle, claims, user_permit, plugin_conn))
}

/// The first frame, within the handshake deadline (transport-level activity does not count).
async fn first_frame<T: Transport>(
    node: &Node,
    transport: &mut T,
    conn: &ConnInfo,
) -> Result<First, Exit> {
    let deadline = conn.opened + node.settings.handshake_timeout;
    loop {
        let Ok(inbound) = tokio::time::timeout_at(deadline, transport.recv()).await else {
            return Err(unauthorized(format!(
                "no connect frame within {} ms of opening the connection; send connect first",
                node.settings.handshake_timeout.as_millis()
            )));
        };
        match inbound {
            Inbound::Text(text) => {
                return Ok(match protocol::parse_request(super::utf8_text(&text)?) {
                    Ok(Request {
                        id,
                        body: RequestBody::Connect { token, name },
                    }) => First::Connect(Connect {
                        id,
                        token: token.map(Cow::into_owned),
                        name: name.map(Cow::into_owned),
                    }),
                    Ok(Request { id, body }) => First::Other {
                        id,
                        kind: body.kind(),
                    },
                    Err(e) => First::Invalid(e),
                });
            }
            Inbound::Activity => continue,
            Inbound::Binary => {
                return Ok(First::Invalid(ParseError {
                    id: None,
                    message: "binary frames are not part of protocol v1; send connect as a JSON text frame".into(),
                }));
            }
            Inbound::TooLarge | Inbound::Invalid(..) => return Err(refused_frame(inbound)),
            Inbound::Closed => return Err(Exit::Gone("closed before connect")),
        }
    }
}

/// The first frame must be a valid `connect`; anything else is answered and closes 4001.
async fn expect_connect<T: Transport>(transport: &mut T, first: First) -> Result<Connect, Exit> {
    match first {
        First::Connect(connect) => Ok(connect),
        First::Other { id, kind } => {
            let err = ErrorReply::new(
                ErrorCode::Unauthorized,
                format!("`{kind}` before `connect`: the first frame must be connect"),
            );
            send_now(transport, protocol::error_reply(id, &err)).await?;
            Err(unauthorized(err.message))
        }
        First::Invalid(e) => {
            let err = ErrorReply::new(ErrorCode::BadRequest, e.message);
            send_now(transport, protocol::error_reply(e.id, &err)).await?;
            Err(unauthorized(
                "the first frame must be a valid connect frame",
            ))
        }
    }
}

/// Verifies the token (from `connect`, or the upgrade's `Authorization` header).
async fn authenticate<T: Transport>(
    node: &Node,
    transport: &mut T,
    conn: &ConnInfo,
    id: Option<u64>,
    token: Option<&str>,
) -> Result<Claims, Exit> {
    let verified = match token {
        // Counts its own failures.
        Some(token) => node.authenticate(token),
        None => {
            node.metrics.auth_failed(auth::Error::Missing.reason());
            Err(auth::Error::Missing)
        }
    };
    match verified {
        Ok(claims) => Ok(claims),
        Err(e) => {
            tracing::info!(remote = %conn.remote, reason = e.reason(), "Authentication failed");
            send_now(transport, protocol::error_reply(id, &e.to_reply())).await?;
            let code = match e {
                auth::Error::Revoked { .. } => CloseCode::Forbidden,
                _ => CloseCode::Unauthorized,
            };
            Err(Exit::Disconnect(Disconnect::new(code, e.to_string())))
        }
    }
}

/// Runs the `connect` plugin chain; a refusal is answered and closes 4003, a full
/// plugin queue 1013.
async fn run_connect_plugins<T: Transport>(
    node: &Node,
    transport: &mut T,
    id: Option<u64>,
    view: PluginConn,
) -> Result<Arc<PluginConn>, Exit> {
    if !node.plugins.connection_has(Hook::Connect) {
        return Ok(Arc::new(view));
    }
    // On a plugin thread: a slow plugin must not hold this worker.
    let ran = node
        .plugins
        .offload(Hook::Connect, move |plugins| {
            let mut view = view;
            let verdict = plugins.on_connect(&mut view);
            (view, verdict)
        })
        .await;
    let (err, code) = match ran {
        Ok((view, Ok(()))) => return Ok(Arc::new(view)),
        Ok((_, Err(refusal))) => (ErrorReply::from(refusal), CloseCode::Forbidden),
        Err(_) => (crate::publish::overloaded(), CloseCode::TryAgainLater),
    };
    send_now(transport, protocol::error_reply(id, &err)).await?;
    Err(Exit::Disconnect(Disconnect::new(code, err.message)))
}

fn connected_reply(
    node: &Node,
    handle: &ConnHandle,
    id: Option<u64>,
    expires: u64,
) -> protocol::EncodedFrame {
    #[derive(Serialize)]
    struct Connected<'a> {
        client: &'a str,
        user: &'a str,
        expires: u64,
        node: &'a str,
    }
    protocol::reply(
        id,
        "connected",
        Connected {
            client: &handle.client,
            user: &handle.user,
            expires,
            node: &node.name,
        },
    )
}

fn new_session(
    node: &Arc<Node>,
    handle: Arc<ConnHandle>,
    claims: Claims,
    user_permit: UserPermit,
    plugin_conn: Option<Arc<PluginConn>>,
) -> Box<Session> {
    let now = crate::clock::now_ms();
    Box::new(Session {
        node: node.clone(),
        expires_at_ms: super::expiry_ms(claims.exp),
        claims,
        _user_permit: user_permit,
        frames: node.rate_limits.connection_frames(),
        subscribes: node.rate_limits.connection_subscribes(),
        violations: 0,
        violations_since_ms: now,
        handle,
        subscriptions: Default::default(),
        plugin_conn,
        started_ms: now,
        next_ping_ms: now + crate::clock::duration_ms(node.settings.ping_interval),
        awaiting_pong_since_ms: 0,
        last_resumed_ms: 0,
        busy: false,
    })
}
