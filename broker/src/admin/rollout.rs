//! `POST /admin/plugins/{name}/promote` and `/rollback`: a module's canary (or shadow)
//! becomes its live version, or is dropped (see `plugins::reload`). The answer is the
//! reload report and what to write into the config to keep the change.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json};
use serde_json::json;

use super::{ApiError, Scope, authorize, reloading};
use crate::node::Node;
use crate::plugins::{Plugins, ReloadReport, RolloutError};
use crate::protocol::ErrorCode;

pub(super) async fn promote(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    change(node, name, headers, Plugins::promote).await
}

pub(super) async fn rollback(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    change(node, name, headers, Plugins::rollback).await
}

type Change = fn(&Plugins, &str) -> Result<(ReloadReport, String), RolloutError>;

async fn change(
    node: Arc<Node>,
    name: String,
    headers: HeaderMap,
    change: Change,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&node, &headers, Scope::Admin)?;
    let plugins = node.plugins.clone();
    let plugin = name.clone();
    let done = reloading(move || change(&plugins, &plugin)).await?;
    match done {
        Ok((report, config)) => Ok(Json(json!({ "report": report, "config": config }))),
        Err(e @ RolloutError::Unknown) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{name:?}: {e}; GET /admin/plugins lists them"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotFound,
            format!("{name:?}: {e}"),
        )),
    }
}
