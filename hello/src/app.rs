//! The router and its handlers. Handlers see one [`NameClient`] in the state and nothing of
//! discovery's insides.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::client::{CallError, NameClient};
use crate::metrics::{Metrics, RequestOutcome};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    instance: Arc<str>,
    client: Arc<NameClient>,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// State for the instance named `instance`.
    pub fn new(
        instance: impl Into<Arc<str>>,
        client: Arc<NameClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            instance: instance.into(),
            client,
            metrics,
        }
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/endpoints", get(debug_endpoints))
        .with_state(state)
}

/// The JSON answer of `GET /`.
#[derive(Debug, Serialize)]
struct Greeting<'a> {
    greeting: String,
    name: &'a str,
    hello_instance: &'a str,
    name_instance: &'a str,
    endpoint: String,
    attempts: u32,
}

async fn hello(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let wants_json = common::wants_json(&headers);
    let reply = match state.client.call().await {
        Ok(reply) => reply,
        Err(error) => {
            state.metrics.request(RequestOutcome::Unavailable);
            return Err(AppError {
                error,
                json: wants_json,
            });
        }
    };
    state.metrics.request(RequestOutcome::Ok);
    let answer = &reply.answer;
    let greeting = format!(
        "Hello (from {}) {} (from {})",
        state.instance, answer.name, answer.instance
    );
    if wants_json {
        Ok(Json(Greeting {
            greeting,
            name: &answer.name,
            hello_instance: &state.instance,
            name_instance: &answer.instance,
            endpoint: reply.endpoint.to_string(),
            attempts: reply.attempts,
        })
        .into_response())
    } else {
        Ok(format!("{greeting}\n").into_response())
    }
}

/// Ready while at least one endpoint is known.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    let known = state.client.endpoints().snapshot().endpoints.len();
    if known == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoints known for {}", state.client.name()),
        )
    } else {
        (StatusCode::OK, format!("ready: {known} endpoints"))
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let report = state.client.endpoints().report(Instant::now());
    (
        // prometheus-client writes the OpenMetrics text format (with `# EOF`).
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&report),
    )
}

async fn debug_endpoints(State(state): State<AppState>) -> Json<serde_json::Value> {
    let endpoints = state.client.endpoints();
    Json(json!({
        "service": state.client.name(),
        "discovery": endpoints.snapshot().discovery,
        "endpoints": endpoints.report(Instant::now()),
    }))
}

/// A request `hello` could not answer with a name: 503, with the reason in words, as text or
/// JSON like the answer would have been.
#[derive(Debug)]
pub struct AppError {
    error: CallError,
    json: bool,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.error, "answered 503");
        let status = StatusCode::SERVICE_UNAVAILABLE;
        if self.json {
            let body = json!({
                "error": self.error.kind(),
                "message": self.error.to_string(),
                "service": self.error.name(),
            });
            (status, Json(body)).into_response()
        } else {
            (status, format!("{}\n", self.error)).into_response()
        }
    }
}
