//! Route table and handlers. Each handler validates its input, calls the service once and
//! shapes the answer; nothing here decides cluster behaviour.

use super::{ApiError, ApiState};
use crate::service::{KEY_BYTES_MAX, ReadConsistency, VALUE_BYTES_MAX};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nodedb_cluster_core::{GroupId, NodeId, VSHARD_COUNT, VShardId};
use serde::Deserialize;
use serde_json::json;

type ApiResult = Result<Response, ApiError>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/kv/{key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{key}/cas", post(kv_cas))
        .route("/v1/vshards/{id}/move", post(move_vshard))
        .route("/v1/migrations", get(migrations))
        .route("/v1/nodes/{id}/decommission", post(decommission))
        .route("/v1/rebalance", post(rebalance))
        .fallback(not_found)
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<ApiState>) -> ApiResult {
    if state.service.is_ready() {
        Ok(Json(json!({ "ready": true })).into_response())
    } else {
        Err(ApiError::unavailable(
            "not ready: not a member with applied metadata yet",
            1,
        ))
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn cluster(State(state): State<ApiState>) -> ApiResult {
    Ok(Json(state.service.cluster().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
}

async fn kv_get(
    State(state): State<ApiState>,
    PathParam(key): PathParam,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult {
    let key = valid_key(key)?;
    let consistency = match params.consistency.as_deref() {
        None | Some("linearizable") => ReadConsistency::Linearizable,
        Some("stale") => ReadConsistency::Stale,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency must be `linearizable` or `stale`, got `{other}`"
            )));
        }
    };
    match state.service.kv_get(key.clone(), consistency).await? {
        Some(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        None => Err(ApiError::not_found(format!("key `{key}` not found"))),
    }
}

async fn kv_put(
    State(state): State<ApiState>,
    PathParam(key): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let key = valid_key(key)?;
    let value = valid_value(body)?;
    Ok(Json(state.service.kv_put(key, value.to_vec()).await?).into_response())
}

async fn kv_delete(State(state): State<ApiState>, PathParam(key): PathParam) -> ApiResult {
    let key = valid_key(key)?;
    Ok(Json(state.service.kv_delete(key).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    expected: Option<String>,
    new: String,
}

async fn kv_cas(
    State(state): State<ApiState>,
    PathParam(key): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let key = valid_key(key)?;
    let body: CasBody = json_body(body)?;
    for value in body.expected.iter().chain([&body.new]) {
        if value.len() > VALUE_BYTES_MAX {
            return Err(too_large_value(value.len()));
        }
    }
    let outcome = state.service.kv_cas(key, body.expected, body.new).await?;
    Ok(Json(outcome).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    to_group: u32,
}

async fn move_vshard(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let vshard = id
        .parse::<u16>()
        .ok()
        .and_then(VShardId::new)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "vshard id must be an integer in 0..{VSHARD_COUNT}, got `{id}`"
            ))
        })?;
    let body: MoveBody = json_body(body)?;
    let migration = state
        .service
        .move_vshard(vshard, GroupId(body.to_group))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(migration)).into_response())
}

async fn migrations(State(state): State<ApiState>) -> ApiResult {
    let migrations = state.service.migrations().await?;
    Ok(Json(json!({ "migrations": migrations })).into_response())
}

async fn decommission(State(state): State<ApiState>, PathParam(id): PathParam) -> ApiResult {
    let node = id
        .parse::<u64>()
        .ok()
        .filter(|raw| *raw > 0)
        .map(NodeId)
        .ok_or_else(|| {
            ApiError::bad_request(format!("node id must be a positive integer, got `{id}`"))
        })?;
    state.service.decommission(node).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "node": node.0, "decommissioning": true })),
    )
        .into_response())
}

async fn rebalance(State(state): State<ApiState>) -> ApiResult {
    let migrations = state.service.rebalance().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "migrations": migrations })),
    )
        .into_response())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

/// The one parameter of a route's path. A path that axum cannot decode (not UTF-8 once
/// percent-decoded) is a 400 in the contract's error shape, not axum's plain-text rejection.
struct PathParam(String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathParam, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// A route's query string; one that does not parse (unknown or repeated parameters, bad
/// percent-encoding) is a 400 in the contract's error shape.
struct QueryParams<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<QueryParams<T>, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

fn valid_key(key: String) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "key is {} bytes, the limit is {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(key)
}

fn valid_value(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let value = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large_value(VALUE_BYTES_MAX + 1),
        _ => ApiError::bad_request(format!("cannot read the request body: {rejection}")),
    })?;
    if value.len() > VALUE_BYTES_MAX {
        return Err(too_large_value(value.len()));
    }
    Ok(value)
}

fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = valid_value(body)?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}

fn too_large_value(bytes: usize) -> ApiError {
    ApiError::bad_request(format!(
        "value is at least {bytes} bytes, the limit is {VALUE_BYTES_MAX}"
    ))
}
