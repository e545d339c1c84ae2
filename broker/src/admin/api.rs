//! The server HTTP API for backends (`/api/*`), per the server API contract. Publishes go
//! through the same [`crate::publish::Pipeline`] as client publishes, as `Source::Api`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ApiError, Scope, authorize};
use crate::access;
use crate::channel::{ChannelName, Namespace};
use crate::node::Node;
use crate::protocol::{self, CloseCode, Disconnect, EncodedFrame, ErrorCode, now_ms};
use crate::publish::{PublishRequest, Source};
use crate::reads;
use crate::sequencer::PresenceList;

/// Most channels one broadcast may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1_000;

/// Reads a JSON body, turning every failure into a `{"code","message"}` answer.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "the request body is larger than api.max_body_bytes",
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid for this route: {e}")))
}

/// A server API request body: the API key is checked first, then the body is read and
/// parsed, every failure becoming a `{"code","message"}` answer.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, ApiError> {
        authorize(node, req.headers(), Scope::Api)?;
        let body = Bytes::from_request(req, node).await;
        parse(body).map(ApiJson)
    }
}

/// A server API query string: the API key is checked first, then the query is parsed.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<Node>> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        authorize(node, &parts.headers, Scope::Api)?;
        query(Query::<T>::from_request_parts(parts, node).await).map(ApiQuery)
    }
}

#[derive(Deserialize)]
pub(super) struct PublishBody {
    channel: String,
    #[serde(default, deserialize_with = "protocol::present_raw")]
    data: Option<Box<RawValue>>,
    key: Option<String>,
}

fn check_key(key: Option<&str>) -> Result<(), ApiError> {
    key.map_or(Ok(()), |k| {
        protocol::check_key(k).map_err(ApiError::bad_request)
    })
}

/// `data` must be there and nest at most `protocol::MAX_DATA_DEPTH` levels.
fn require_data(data: Option<Box<RawValue>>) -> Result<Box<RawValue>, ApiError> {
    let data =
        data.ok_or_else(|| ApiError::bad_request("the body needs `data` (any JSON value)"))?;
    protocol::check_depth(data.get()).map_err(ApiError::bad_request)?;
    Ok(data)
}

/// `POST /api/publish`
pub(super) async fn publish(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<PublishBody>,
) -> Result<Json<Value>, ApiError> {
    check_key(body.key.as_deref())?;
    let data = require_data(body.data)?;
    let accepted = node
        .pipeline
        .publish_async(PublishRequest {
            source: Source::Api,
            channel: &body.channel,
            data: &data,
            key: body.key.as_deref(),
        })
        .await?;
    Ok(Json(
        json!({"channel": accepted.channel.as_str(), "offset": accepted.offset}),
    ))
}

#[derive(Deserialize)]
pub(super) struct BroadcastBody {
    channels: Vec<String>,
    #[serde(default, deserialize_with = "protocol::present_raw")]
    data: Option<Box<RawValue>>,
}

/// `POST /api/broadcast`: one result per channel, in the order given.
pub(super) async fn broadcast(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> Result<Json<Value>, ApiError> {
    let data = require_data(body.data)?;
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels, got {}",
            body.channels.len()
        )));
    }
    let mut results: Vec<Value> = Vec::with_capacity(body.channels.len());
    for channel in &body.channels {
        let request = PublishRequest {
            source: Source::Api,
            channel,
            data: &data,
            key: None,
        };
        results.push(match node.pipeline.publish_async(request).await {
            Ok(a) => json!({"channel": channel, "offset": a.offset}),
            Err(e) => {
                json!({"channel": channel, "error": {"code": e.code.as_str(), "message": e.message}})
            }
        });
    }
    Ok(Json(json!({ "results": results })))
}

/// Closes every connection of `user` on this node with 4003 (after what is queued).
fn close_user(node: &Node, user: &str, reason: &'static str) -> usize {
    let n = node
        .registry
        .disconnect_user(user, &Disconnect::new(CloseCode::Forbidden, reason));
    tracing::info!(
        user,
        connections = n,
        reason,
        "Operator closed a user's connections"
    );
    n
}

#[derive(Deserialize)]
pub(super) struct UserBody {
    user: String,
}

/// `POST /api/disconnect`: closes the user's connections with 4003 (in a cluster, on
/// every node).
pub(super) async fn disconnect(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Value>, ApiError> {
    const REASON: &str = "disconnected by an operator";
    let n = match &node.cluster {
        Some(cluster) if cluster.not_ready().is_none() => {
            cluster.disconnect(&body.user, REASON).await
        }
        _ => close_user(&node, &body.user, REASON),
    };
    Ok(Json(json!({ "disconnected": n })))
}

/// `unavailable`: the cluster could not store a revocation change.
fn cluster_unavailable(what: &str, e: &anyhow::Error) -> ApiError {
    tracing::error!(error = %e, "Cannot store a revocation change in the cluster");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        format!("{what} holds on this node but could not be stored for the cluster ({e}); retry"),
    )
}

#[derive(Deserialize)]
pub(super) struct RevokeBody {
    user: String,
    until: u64,
}

/// `POST /api/revoke`: refuses the user's tokens issued before now, until `until`, and
/// closes the user's open connections with 4003.
pub(super) async fn revoke(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    let now_s = now_ms() / 1000;
    if body.until <= now_s {
        return Err(ApiError::bad_request(format!(
            "`until` ({}) must be in the future (now is {now_s}, Unix seconds)",
            body.until
        )));
    }
    let saved = node.revocations.revoke(&body.user, now_s, body.until);
    if let Err(e) = &saved {
        tracing::error!(error = %e, "Cannot save the revocation list; the revocation holds until this process ends");
    }
    tracing::info!(user = ?body.user, until = body.until, "Operator revoked a user's tokens");
    const REASON: &str = "the token was revoked by an operator";
    let closed = match &node.cluster {
        Some(cluster) => {
            cluster
                .revoke(&body.user, now_s, body.until)
                .await
                .map_err(|e| cluster_unavailable("the revocation", &e))?;
            close_user(&node, &body.user, REASON) + cluster.disconnect(&body.user, REASON).await
        }
        None => close_user(&node, &body.user, REASON),
    };
    // The spec's answer is `{}`; the fields say what happened and what comes next.
    Ok(Json(json!({
        "user": body.user,
        "revoked_at": now_s,
        "until": body.until,
        "disconnected": closed,
        "persisted": node.revocations.persistent() && saved.is_ok(),
        "next": format!(
            "tokens of this user issued at or before {now_s} are refused until {}; issue a new token (its iat after {now_s}) to let the user back in, or lift the revocation with POST /api/unrevoke",
            body.until
        ),
    })))
}

/// `GET /api/revocations`: every revocation in force.
pub(super) async fn revocations(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&node, &headers, Scope::Api)?;
    Ok(Json(json!({ "revocations": node.revocations.list() })))
}

/// `POST /api/unrevoke`: lifts a user's revocation (their old tokens work again).
pub(super) async fn unrevoke(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Value>, ApiError> {
    let lifted = node.revocations.lift(&body.user).map_err(|e| {
        tracing::error!(error = %e, "Cannot save the revocation list");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the revocation was lifted in memory but the list could not be saved; retry",
        )
    })?;
    if let Some(cluster) = &node.cluster {
        cluster
            .unrevoke(&body.user)
            .await
            .map_err(|e| cluster_unavailable("lifting the revocation", &e))?;
    }
    tracing::info!(user = ?body.user, lifted, "Operator lifted a user's revocation");
    Ok(Json(json!({ "user": body.user, "lifted": lifted })))
}

#[derive(Deserialize)]
pub(super) struct ChannelQuery {
    channel: Option<String>,
    limit: Option<usize>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::bad_request(format!("the query string is not valid: {}", e.body_text()))
    })
}

/// The `channel` query parameter, checked and resolved to its namespace.
fn channel_param(node: &Node, q: &ChannelQuery) -> Result<(ChannelName, Arc<Namespace>), ApiError> {
    let channel = q.channel.as_deref().ok_or_else(|| {
        ApiError::bad_request("add the `channel` query parameter, e.g. ?channel=chat:lobby")
    })?;
    Ok(access::resolve(&node.namespaces, channel)?)
}

/// A reply encoded for clients, sent as the API's JSON object (the same bytes).
fn frame_response(frame: EncodedFrame) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], frame.bytes()).into_response()
}

/// `GET /api/presence?channel=…`
pub(super) async fn presence(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Response, ApiError> {
    let (channel, ns) = channel_param(&node, &q)?;
    reads::presence_enabled(&ns)?;
    let members = match node.presence.list(&channel) {
        PresenceList::Now(members) => members,
        PresenceList::Later(later) => later.await,
    };
    Ok(frame_response(reads::presence_reply(
        &channel, None, &members,
    )))
}

/// `GET /api/history?channel=…&limit=N`
pub(super) async fn history(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Response, ApiError> {
    let (channel, ns) = channel_param(&node, &q)?;
    if let Some(wait) = node.log.prepare(&ns, &channel) {
        wait.await?;
    }
    let frame = reads::history(&node.hub, &ns, &channel, None, q.limit, None)?;
    Ok(frame_response(frame))
}

#[derive(Deserialize)]
pub(super) struct ScopeQuery {
    scope: Option<String>,
}

/// `GET /api/channels[?scope=node|cluster]`
pub(super) async fn channels(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&node, &headers, Scope::Api)?;
    let q = query(q)?;
    let cluster = match (&node.cluster, q.scope.as_deref()) {
        (_, None | Some("node")) => None,
        (Some(cluster), Some("cluster")) => Some(cluster),
        (None, Some("cluster")) => {
            return Err(ApiError::bad_request(
                "scope=cluster needs a cluster ([cluster] nats_url); this node runs alone",
            ));
        }
        (_, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "scope={other:?}: use node (this node, the default) or cluster"
            )));
        }
    };
    let list: Vec<Value> = match cluster {
        Some(cluster) => cluster
            .channels()
            .await
            .into_iter()
            .map(|(c, n)| json!({"channel": c, "subscribers": n}))
            .collect(),
        None => node
            .hub
            .channels()
            .into_iter()
            .map(|(c, n)| json!({"channel": c.as_str(), "subscribers": n}))
            .collect(),
    };
    Ok(Json(json!({ "channels": list })))
}
