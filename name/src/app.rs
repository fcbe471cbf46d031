//! The router: `/` answers with a name, `/healthz` with liveness, `/readyz` with readiness,
//! which turns off while the instance drains. While draining, every answer also carries
//! `Connection: close`, so callers' pooled keep-alive connections end with the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::map_response_with_state;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use common::{NameAnswer, wants_json};
use rand::seq::IndexedRandom;

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

    /// From now on `/readyz` answers 503; `/` keeps answering, with `Connection: close`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(random_name))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(map_response_with_state(state.clone(), close_while_draining))
        .with_state(state)
}

/// While draining, ask the caller to close the connection after this answer (hyper then closes
/// it too): a pooled keep-alive connection would otherwise outlive the drain and meet a closed
/// socket on its next request.
async fn close_while_draining(State(state): State<AppState>, mut response: Response) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
        // A line of text, so that `curl` leaves the prompt on a line of its own.
        format!("{name} (from {})\n", state.instance).into_response()
    }
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(state: &AppState, path: &str, accept: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(path);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = app(state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn text_answer_names_the_instance() {
        let (status, body) = get(&AppState::new("n7"), "/", None).await;
        assert_eq!(status, StatusCode::OK);
        let (name, rest) = body.split_once(' ').unwrap();
        assert!(NAMES.contains(&name), "{body}");
        assert_eq!(rest, "(from n7)\n");
    }

    #[tokio::test]
    async fn json_answer_when_asked() {
        let (status, body) = get(&AppState::new("n7"), "/", Some("application/json")).await;
        assert_eq!(status, StatusCode::OK);
        let answer: NameAnswer = serde_json::from_str(&body).unwrap();
        assert!(NAMES.contains(&answer.name.as_str()));
        assert_eq!(answer.instance, "n7");
    }

    #[tokio::test]
    async fn draining_is_not_ready_but_still_answers() {
        let state = AppState::new("n7");
        assert_eq!(get(&state, "/readyz", None).await.0, StatusCode::OK);

        state.start_draining();

        assert_eq!(
            get(&state, "/readyz", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&state, "/healthz", None).await.0, StatusCode::OK);
        assert_eq!(get(&state, "/", None).await.0, StatusCode::OK);
    }

    async fn connection_header(state: &AppState, path: &str) -> Option<HeaderValue> {
        let response = app(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.headers().get(header::CONNECTION).cloned()
    }

    #[tokio::test]
    async fn draining_answers_close_the_connection() {
        let state = AppState::new("n7");
        for path in ["/", "/healthz", "/readyz"] {
            assert_eq!(
                connection_header(&state, path).await,
                None,
                "{path} before draining"
            );
        }

        state.start_draining();

        for path in ["/", "/healthz", "/readyz"] {
            assert_eq!(
                connection_header(&state, path).await,
                Some(HeaderValue::from_static("close")),
                "{path} while draining"
            );
        }
    }
}
