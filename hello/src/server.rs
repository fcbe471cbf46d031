//! Wiring: the endpoint set, the refresher that fills it, the client that reads it, the
//! router; then serving until shutdown, and stopping the refresher.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::NameClient;
use crate::config::{CallOptions, Config, ServiceHost};
use crate::dns::Dns;
use crate::endpoints::{Discovery, EjectionPolicy, EndpointSet};
use crate::metrics::Metrics;
use crate::refresh::{Refresher, TtlBounds};
use crate::{AppState, app};

/// How long an unused connection to a `name` instance stays open.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves on `listener` until `shutdown` completes and in-flight requests are answered, with
/// discovery running in the background meanwhile.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let instance = config.listen.instance_id().await;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    let url = &config.upstream.name_service_url;
    tracing::info!(%addr, %instance, service = %url.display_host(), record = %config.upstream.discovery_record, "hello is serving");

    let calls = config.calls;
    connection_pool(&calls).context("cannot build the HTTP client")?;
    let endpoints = Arc::new(EndpointSet::new(ejection_policy(&calls), move || {
        // The same settings built a client above, and building one depends on nothing else
        // (no TLS backend, no system configuration), so this cannot fail.
        #[allow(clippy::expect_used)]
        connection_pool(&calls).expect("the HTTP client was built at start-up")
    }));
    let metrics = Arc::new(Metrics::default());
    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();

    let refresher = match &url.host {
        ServiceHost::Ip(ip) => {
            endpoints.apply(
                &BTreeSet::from([SocketAddr::new(*ip, url.port)]),
                Discovery::Fixed,
            );
            None
        }
        ServiceHost::Dns(name) => {
            let up = &config.upstream;
            let dns = Dns::new(
                name,
                up.discovery_record,
                url.port,
                up.dns_server,
                &config.dns,
            )?;
            let refresher = Refresher {
                lookup: dns,
                endpoints: Arc::clone(&endpoints),
                bounds: TtlBounds {
                    min: config.dns.dns_min_ttl,
                    max: config.dns.dns_max_ttl,
                },
                wake: Arc::clone(&wake),
                metrics: Arc::clone(&metrics),
            };
            Some(tokio::spawn(refresher.run(stop.clone())))
        }
    };

    let client = NameClient::new(
        url.display_host(),
        endpoints,
        calls,
        Arc::clone(&metrics),
        wake,
    );
    let state = AppState::new(instance, Arc::new(client), metrics);
    let serve = common::serve(listener, app(state), shutdown);
    let mut refresher = refresher;
    // The refresher runs until told to stop; if it ends before, hello would serve a frozen
    // set of endpoints, so it stops instead, and the orchestrator starts a fresh one.
    let refresher_ended = async {
        match refresher.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serve => served.context("server failed")?,
        ended = refresher_ended => anyhow::bail!("the DNS refresher stopped: {ended:?}"),
    }

    stop.cancel();
    if let Some(refresher) = refresher {
        refresher.await.context("DNS refresher failed")?;
    }
    tracing::info!("stopped");
    Ok(())
}

fn ejection_policy(calls: &CallOptions) -> EjectionPolicy {
    EjectionPolicy {
        after_failures: calls.eject_after_failures,
        base_time: calls.eject_base_time,
        max_time: calls.eject_max_time,
        max_percent: calls.eject_max_percent,
    }
}

/// One endpoint's connection pool. No proxy: a proxy from the environment (`HTTP_PROXY`)
/// would hide the endpoints from the balancer.
fn connection_pool(calls: &CallOptions) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(calls.connect_timeout)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
}
