//! Serving: the upstream, the router around it, and the order things stop in.

use std::future::Future;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::emf::UpstreamMetrics;
use crate::{AppState, Config, app};
use upstream::Upstream;

/// Serves on `listener` until `shutdown` completes and in-flight requests are answered, with
/// discovery running in the background meanwhile. `config` was checked when it was parsed.
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
    let target = config.target();
    tracing::info!(%addr, %instance, service = %target.display_host(), record = %config.upstream.discovery_record, "hello is serving");

    let mut registry = Registry::with_prefix("hello");
    let upstream = Upstream::start(target, config.options(identity.zone.clone()), &mut registry)?;
    let connections = common::ConnectionMetrics::register(&mut registry);
    let reporting =
        common::Reporting::new(&config.telemetry, &config.listen, "hello", identity.zone);
    let state = AppState::new(instance, upstream.clone(), registry);
    let request_log = reporting.request_log();
    let metrics = reporting.start(vec![Box::new(UpstreamMetrics::new(state.clone()))]);
    let router = app(state);
    let serve = common::serve(
        listener,
        router,
        request_log,
        shutdown,
        config.listen.limits(),
        connections,
    );
    // Discovery runs until told to stop; if it ends before, hello would serve a frozen set of
    // endpoints, so it stops instead, and the orchestrator starts a fresh one.
    tokio::select! {
        served = serve => served.context("server failed")?,
        failed = upstream.failed() => return Err(failed),
    }
    if let Some(metrics) = metrics {
        metrics.finish().await;
    }
    upstream.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
