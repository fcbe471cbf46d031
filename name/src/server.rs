//! Running the service: serve until told to stop, then drain, then close gracefully.

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{AppState, Config, app};

/// Serves on `listener` until `shutdown` completes; then reports not-ready and keeps serving
/// for the drain period, so callers notice before the instance goes; then stops accepting,
/// finishes in-flight requests and returns.
///
/// ECS removes the task from Cloud Map and sends SIGTERM at the same moment, so callers that
/// cached the DNS answer still send requests here until their cache expires; the drain period
/// is what keeps those requests from failing.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let identity = config.listen.identity().await;
    let instance = identity.instance;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    tracing::info!(%addr, %instance, drain_seconds = config.drain_seconds, "name is serving");

    let reporting =
        common::Reporting::new(&config.telemetry, &config.listen, "name", identity.zone);
    let state = AppState::new(instance);
    let request_log = reporting.request_log();
    let metrics = reporting.start(Vec::new());
    let drain = config.drain();
    let draining = state.clone();
    let stop = async move {
        shutdown.await;
        if !drain.is_zero() {
            draining.start_draining();
            tracing::info!(
                drain_seconds = drain.as_secs(),
                "draining: not ready, still serving"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("closing: finishing in-flight requests");
    };
    let limits = config.listen.limits();
    common::serve(
        listener,
        app(state),
        request_log,
        stop,
        limits,
        Default::default(),
    )
    .await
    .context("server failed")?;
    if let Some(metrics) = metrics {
        metrics.finish().await;
    }
    tracing::info!("stopped");
    Ok(())
}
