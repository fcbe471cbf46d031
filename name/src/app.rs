//! The router: `/` answers with a name, `/healthz` with liveness, `/readyz` with readiness,
//! which turns off while the instance drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use common::wants_json;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::names::NAMES;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    instance: Arc<str>,
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// State for an instance named `instance`, ready to take traffic.
    pub fn new(instance: impl Into<Arc<str>>) -> Self {
        Self {
            instance: instance.into(),
            draining: Arc::default(),
        }
    }

    /// From now on `/readyz` answers 503; `/` keeps answering.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The JSON answer of `GET /` with `Accept: application/json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NameAnswer {
    /// The chosen first name.
    pub name: String,
    /// The instance that chose it.
    pub instance: String,
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(random_name))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn random_name(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let name = NAMES.choose(&mut rand::rng()).copied().unwrap_or("Olivia");
    if wants_json(&headers) {
        Json(NameAnswer {
            name: name.to_owned(),
            instance: state.instance.to_string(),
        })
        .into_response()
    } else {
        format!("{name} (from {})", state.instance).into_response()
    }
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    }
}
