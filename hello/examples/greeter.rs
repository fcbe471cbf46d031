//! Another service calling `name` through the front door only: the `upstream` directory of
//! `hello` copied into any axum service gives it discovery, balancing, retries and ejection
//! with these few lines.
//!
//! ```text
//! NAME_SERVICE_URL=http://name.internal:3000 cargo run --example greeter
//! curl localhost:8080/greet
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use upstream::{Options, Upstream};

/// The part of `name`'s answer this service reads.
#[derive(serde::Deserialize)]
struct Answer {
    name: String,
}

/// The greeter's routes: `GET /greet` asks `name` for a name.
pub fn router(upstream: Upstream) -> Router {
    Router::new()
        .route("/greet", get(greet))
        .with_state(upstream)
}

async fn greet(State(upstream): State<Upstream>) -> Result<String, (StatusCode, String)> {
    let reply = upstream
        .call(|body| serde_json::from_slice::<Answer>(body))
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
    axum::serve(listener, router(upstream)).await?;
    Ok(())
}
