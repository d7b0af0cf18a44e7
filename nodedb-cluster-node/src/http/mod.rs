//! The HTTP admin API of the outside contract: health, readiness, metrics, cluster status, the
//! KV store and the admin verbs. Handlers only translate between HTTP and [`ClusterService`];
//! every error leaves as `{"error":{"code","message"}}` with the status code its kind demands.

mod error;
mod routes;

pub use error::ApiError;

use crate::service::{ClusterService, VALUE_BYTES_MAX};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiState {
    pub service: Arc<dyn ClusterService>,
    /// When set, every endpoint but `/healthz` requires `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    pub metrics: PrometheusHandle,
}

/// Builds the router of the whole admin API.
pub fn router(state: ApiState) -> Router {
    routes::routes()
        // One byte over the value limit, so that an oversize value is seen and refused with a
        // clear 400 instead of being cut off.
        .layer(DefaultBodyLimit::max(VALUE_BYTES_MAX + 1))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("the bearer token is not valid").into_response(),
        None => ApiError::unauthorized("this endpoint needs `Authorization: Bearer <token>`")
            .into_response(),
    }
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiState")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}
