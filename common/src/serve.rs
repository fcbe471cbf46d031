//! Serving a router: request spans keyed by the matched route, and a graceful shutdown that
//! stops accepting, lets in-flight requests finish, and then returns.

use std::future::Future;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

/// Serves `router` on `listener` until `shutdown` completes and every in-flight request has
/// been answered.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::debug_span!("request", method = %request.method(), route)
            })
            // A 503 from `/readyz` is an answer, not a fault; the handlers log the faults they see.
            .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// True when the request's `Accept` header asks for JSON; both services answer plain text
/// otherwise.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json"))
}
