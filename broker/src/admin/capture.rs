//! `/admin/plugins/capture`: record real events for `hookwire plugin test` (see
//! `plugins::capture`). `POST` starts (body: `namespace`, `max_events`, `sample_percent`,
//! `redact_claims`), `GET` answers the JSONL recorded so far (the status in
//! `x-hookwire-capture`), `DELETE` stops.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json};

use super::{ApiError, Scope, authorize};
use crate::node::Node;
use crate::plugins::capture::CaptureRequest;
use crate::protocol::ErrorCode;

pub(super) async fn start(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    let request: CaptureRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"namespace\": \"chat\", \"max_events\": 1000, \"sample_percent\": 100, \"redact_claims\": [\"email\"]}}: {e}"
        ))
    })?;
    if let Some(problem) = request.problem() {
        return Err(ApiError::bad_request(problem));
    }
    if !node.namespaces.contains(&request.namespace) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no namespace {:?} in [namespaces]", request.namespace),
        ));
    }
    Ok(Json(node.plugins.capture.start(request)))
}

pub(super) async fn read(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    let Some((status, lines)) = node.plugins.capture.read() else {
        return Err(nothing_recorded());
    };
    let status = serde_json::to_string(&status).expect("serializes");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::HeaderName::from_static("x-hookwire-capture"),
                status,
            ),
        ],
        lines,
    ))
}

pub(super) async fn stop(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    node.plugins
        .capture
        .stop()
        .map(Json)
        .ok_or_else(nothing_recorded)
}

fn nothing_recorded() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no capture was started: POST /admin/plugins/capture with a namespace first",
    )
}
