//! A service calling `name` through the front door only: these few lines give any axum
//! service discovery, balancing, retries and ejection. The answer is decoded where it lies in
//! the connection's buffer.
//!
//! ```text
//! NAME_SERVICE_URL=http://name.internal:3000 cargo run -p upstream --example greeter
//! curl localhost:8080/greet
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use upstream::{Options, Request, Upstream};

/// The part of `name`'s answer this service reads.
#[derive(serde::Deserialize)]
struct Answer {
    name: String,
}

/// What the greeter's route needs: the upstream, and the one request it makes of it, built
/// and checked once.
#[derive(Clone)]
struct Greeter {
    upstream: Upstream,
    request: Arc<Request>,
}

/// The greeter's routes: `GET /greet` asks `name` for a name.
pub fn router(upstream: Upstream) -> anyhow::Result<Router> {
    let request = Request::get("/")?.with_header("accept", "application/json")?;
    let greeter = Greeter {
        upstream,
        request: Arc::new(request),
    };
    Ok(Router::new()
        .route("/greet", get(greet))
        .with_state(greeter))
}

async fn greet(State(greeter): State<Greeter>) -> Result<String, (StatusCode, String)> {
    let reply = greeter
        .upstream
        .call(&greeter.request, |answer| {
            serde_json::from_slice::<Answer>(answer.body())
        })
        .await
        .map_err(|err| (StatusCode::SERVICE_UNAVAILABLE, err.chain()))?;
    Ok(format!("Good day, {}!\n", reply.answer.name))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NAME_SERVICE_URL")
        .unwrap_or_else(|_| "http://name.internal:3000".to_owned());
    let target = url.parse().map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let upstream = Upstream::start(target, Options::default(), &mut registry)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    axum::serve(listener, router(upstream)?).await?;
    Ok(())
}
