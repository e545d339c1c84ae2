//! The admin listener: health, readiness, metrics, the server HTTP API (`/api/*`) and
//! operator endpoints (`/admin/*`), per the server API contract.
//!
//! Handlers only parse, call the library (the same publish pipeline clients use) and
//! wrap its answers; errors become responses in one place ([`ApiError`]).

mod api;
mod capture;
pub mod config;
mod rollout;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::logging::Throttle;
use crate::node::Node;
use crate::plugins::ReloadTrigger;
use crate::protocol::{ErrorCode, ErrorReply};
pub use config::ApiConfig;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(api::publish))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/revoke", post(api::revoke))
        .route("/api/unrevoke", post(api::unrevoke))
        .route("/api/revocations", get(api::revocations))
        .route("/api/presence", get(api::presence))
        .route("/api/history", get(api::history))
        .route("/api/channels", get(api::channels))
        .route("/admin/connections", get(connections))
        .route("/admin/plugins", get(plugins))
        .route("/admin/plugins/reload", post(reload_plugins))
        .route("/admin/plugins/{name}/promote", post(rollout::promote))
        .route("/admin/plugins/{name}/rollback", post(rollout::rollback))
        .route(
            "/admin/plugins/capture",
            post(capture::start)
                .get(capture::read)
                .delete(capture::stop),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node.clone(), count_requests))
        .layer(DefaultBodyLimit::max(node.config.api.max_body_bytes))
        .with_state(node)
}

/// An HTTP error: the status and the client protocol's `{"code","message"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
}

/// The HTTP status for each client protocol error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::Rejected => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ErrorReply> for ApiError {
    fn from(e: ErrorReply) -> Self {
        Self::new(status_of(e.code), e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'static str,
            message: &'a str,
        }
        let body = Body {
            code: self.code.as_str(),
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Which key a route needs.
#[derive(Clone, Copy)]
pub enum Scope {
    Api,
    Admin,
}

/// Checks `Authorization: apikey <key>` against the key for the scope.
pub fn authorize(node: &Node, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let (expected, var, reason) = match scope {
        Scope::Api => (node.keys.api.as_deref(), "HOOKWIRE_API_KEY", "api_key"),
        Scope::Admin => (
            node.keys.admin.as_deref(),
            "HOOKWIRE_ADMIN_KEY",
            "admin_key",
        ),
    };
    let unauthorized =
        |m: String| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m);
    let Some(expected) = expected else {
        return Err(unauthorized(format!(
            "this endpoint is disabled because {var} is not set on the server"
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "))
        .map(str::trim);
    let refused = match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => return Ok(()),
        None => "send the key as `Authorization: apikey <key>`",
        Some(_) => "the API key is not valid",
    };
    key_refused(node, reason, given.is_some());
    Err(unauthorized(refused.into()))
}

/// Bad-key lines a client can cause at will: at most this many per second.
static KEY_LOG: Throttle = Throttle::new(10);

/// Counts a refused API or admin key (`hookwire_auth_failures_total{reason}`) and logs it,
/// throttled, without the key.
fn key_refused(node: &Node, reason: &'static str, sent_a_key: bool) {
    node.metrics.auth_failed(reason);
    if KEY_LOG.allow() {
        tracing::info!(
            reason,
            sent_a_key,
            "Refused an API request: missing or wrong key (the key is not logged)"
        );
    }
}

/// Compares without an early exit, so response timing does not reveal a key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts server API requests by route (a fixed set) and status class.
async fn count_requests(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    const ROUTES: &[&str] = &[
        "/api/publish",
        "/api/broadcast",
        "/api/disconnect",
        "/api/revoke",
        "/api/unrevoke",
        "/api/revocations",
        "/api/presence",
        "/api/history",
        "/api/channels",
        "/admin/connections",
        "/admin/plugins",
        "/admin/plugins/reload",
        "/admin/plugins/capture",
    ];
    let path = req.uri().path();
    let route = ROUTES.iter().find(|r| **r == path).copied().or_else(|| {
        let name = path.strip_prefix("/admin/plugins/")?;
        [
            ("/promote", "/admin/plugins/{name}/promote"),
            ("/rollback", "/admin/plugins/{name}/rollback"),
        ]
        .into_iter()
        .find(|(end, _)| name.ends_with(end))
        .map(|(_, route)| route)
    });
    let response = next.run(req).await;
    if let Some(route) = route {
        let status = format!("{}xx", response.status().as_u16() / 100);
        node.metrics
            .api_requests
            .with_label_values(&[route, &status])
            .inc();
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint; see the server API documentation for the routes",
    )
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "reason": "the server is shutting down"})),
        )
    } else if let Some(reason) = node.cluster.as_ref().and_then(|c| c.not_ready()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(),
    )
}

#[derive(Deserialize)]
struct UserQuery {
    user: Option<String>,
}

/// `GET /admin/connections?user=…`: every connection (of one user), for debugging.
async fn connections(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Result<Query<UserQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("the query string is not valid: {}", e.body_text()))
    })?;
    #[derive(Serialize)]
    struct Connection {
        client: String,
        user: String,
        transport: crate::transport::TransportKind,
        remote: String,
        connected_at: u64,
        subscriptions: Vec<String>,
        queue_depth: usize,
    }
    let list: Vec<Connection> = node
        .registry
        .peers(q.user.as_deref())
        .into_iter()
        .map(|p| Connection {
            client: p.client.to_string(),
            user: p.user.to_string(),
            transport: p.transport,
            remote: p.remote().to_string(),
            connected_at: p.connected_at_ms,
            subscriptions: node
                .hub
                .channels_of(p.key)
                .into_iter()
                .map(|c| c.to_string())
                .collect(),
            queue_depth: p.outbound.depth(),
        })
        .collect();
    Ok(Json(json!({ "connections": list })))
}

/// `GET /admin/plugins`: every loaded plugin with its counters, and failed loads.
async fn plugins(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    Ok(Json(node.plugins.view()))
}

/// `POST /admin/plugins/reload`: reloads the plugin files; answers which changed and
/// which failed (a failed plugin keeps its previous version).
async fn reload_plugins(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    if !node.plugins.active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotFound,
            "no plugins are configured (plugins.enabled is false or plugins.modules is empty); configure them and restart",
        ));
    }
    let plugins = node.plugins.clone();
    let report = reloading(move || plugins.reload_and_log(None, ReloadTrigger::Admin)).await?;
    Ok(Json(report))
}

/// Runs a plugin reload (it compiles) off the async workers.
async fn reloading<R: Send + 'static>(
    reload: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(reload).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("the reload task failed: {e}"),
        )
    })
}
