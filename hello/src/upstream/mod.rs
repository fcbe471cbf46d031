//! Discovery, balancing and calling of one upstream service, behind one front door: the part
//! of `hello` to copy into another service. It depends on nothing else in `hello`.
//!
//! # Front door
//!
//! - [`Upstream::start`]: takes a [`Target`] (where), [`Options`] (how) and a metrics
//!   [`Registry`]; starts discovery in the background and returns the handle. The background
//!   task stops when the last clone of the handle drops, or at [`Upstream::shutdown`].
//! - [`Upstream::call`]: one call, with retries, ejection and the retry budget; the caller
//!   decodes the answer.
//! - [`Upstream::report`]: what the upstream knows now, for a debug route;
//!   [`Upstream::known_endpoints`], for readiness.
//! - The types these take and give: [`Target`], [`Options`] (with [`Source`], [`RecordKind`],
//!   [`TtlBounds`], [`RetryPolicy`], [`EjectionPolicy`], [`ProbePolicy`], [`HedgePolicy`] and
//!   the Cloud Map and zone options), [`Reply`], [`CallError`], [`Report`].
//!
//! Everything else inside is private.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use hello::upstream::{Options, Upstream};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let target = "http://name.internal:3000".parse().map_err(anyhow::Error::msg)?;
//! let upstream = Upstream::start(target, Options::default(), &mut registry)?;
//! let reply = upstream.call(|body| std::str::from_utf8(body).map(str::to_owned)).await?;
//! println!("{} answered {}", reply.endpoint, reply.answer);
//! # Ok(()) }
//! ```
//!
//! # Inside
//!
//! After tower's discover / load / balance split and linkerd's dns / pool crates:
//! `dns` looks a name up into a full snapshot; `membership` keeps the members of capped DNS
//! answers (MULTIVALUE's 8, WEIGHTED's 1) for a while; `cloudmap` is the other source, Cloud
//! Map's discovery API ([`Source::CloudMap`]), polled by revision; `refresh` asks either on
//! the TTL's (or the poll's) schedule, clamped, and keeps the last good answer when a lookup
//! fails; `endpoints` holds the set and each endpoint's load and health (outlier ejection);
//! `picker` chooses by power of two choices, within the zone `zone` prefers (Envoy's
//! zone-aware proportions) when zones are known; `probe` checks new, ejected and failing
//! endpoints off the request path; `retry` is the retry policy and budget; `hedge` tracks
//! latency and says when to race a slow attempt; `call` makes the attempts over `pool`, each
//! endpoint's connections, which speak HTTP/1.1 through `http1`'s codec in the caller's task
//! (no connection task, no channel); `metrics` registers the counters. The refresh and probe
//! requested from the request path live on the shared state, next to the set they act on.

mod call;
mod cloudmap;
mod dns;
mod endpoints;
mod hedge;
mod http1;
mod membership;
mod metrics;
mod options;
mod picker;
mod pool;
mod probe;
mod refresh;
mod retry;
mod zone;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http::header::HeaderValue;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use call::{CallError, Reply};
pub use options::{
    CloudMapOptions, EjectionPolicy, HedgePolicy, LocalZone, Options, ProbePolicy, RecordKind,
    RetryPolicy, Source, Target, TargetHost, TtlBounds, ZonePolicy,
};

use call::{Caller, DecodeError};
use cloudmap::CloudMap;
use dns::Dns;
use endpoints::{Discovery, EndpointReport, EndpointSet, Requests};
use hedge::Latency;
use membership::Membership;
use metrics::Metrics;
use pool::{Pool, PoolOptions};
use probe::Prober;
use refresh::Refresher;
use zone::ZoneRouting;

/// A handle on one upstream service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    caller: Caller,
    /// The background tasks: the prober, and the refresher when there is one; taken by
    /// whoever waits for them.
    tasks: tokio::sync::Mutex<Option<tokio::task::JoinSet<()>>>,
    stop: CancellationToken,
    /// Stops the refresher when the last handle drops.
    _stop_on_drop: DropGuard,
}

/// What the request path and the background tasks share: the endpoint set, the requests for
/// an early refresh or probe, recent latency, and the counters.
pub(crate) struct Shared {
    endpoints: Arc<EndpointSet>,
    refresh: Notify,
    probe: Notify,
    latency: Latency,
    metrics: Metrics,
}

impl Shared {
    fn new(options: &Options, via: Option<HeaderValue>, registry: &mut Registry) -> Arc<Self> {
        let endpoints = Arc::new(EndpointSet::new(
            options.ejection,
            Requests::new(&options.probe.path, via),
            pool_builder(options),
        ));
        let metrics = Metrics::register(registry, Arc::clone(&endpoints));
        Arc::new(Self {
            endpoints,
            refresh: Notify::new(),
            probe: Notify::new(),
            latency: Latency::new(options.hedge),
            metrics,
        })
    }

    /// Asks the refresher to look again before the TTL runs out.
    fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Completes when a refresh was requested.
    async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Asks the prober to look at the endpoints that need it now, not at its next round.
    fn request_probe(&self) {
        self.probe.notify_one();
    }

    /// Completes when a probe was requested.
    async fn probe_requested(&self) {
        self.probe.notified().await;
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        Self::new(&Options::default(), None, &mut Registry::default())
    }
}

/// Makes each endpoint's connection pool.
fn pool_builder(options: &Options) -> impl Fn(SocketAddr) -> Pool + Send + Sync + 'static {
    let options = PoolOptions {
        connect_timeout: options.connect_timeout,
        idle_timeout: options.idle_timeout,
    };
    move |addr| Pool::new(addr, options)
}

/// A pool for unit tests, with the default options.
#[cfg(test)]
pub(crate) fn test_pool(addr: SocketAddr) -> Pool {
    pool_builder(&Options::default())(addr)
}

/// The Cloud Map namespace and service to ask: as configured, or else from the target's DNS
/// name, `<service>.<namespace>`.
fn cloudmap_names(target: &Target, options: &CloudMapOptions) -> anyhow::Result<(String, String)> {
    let from_name = match &target.host {
        TargetHost::Dns(name) => name.trim_end_matches('.').split_once('.'),
        TargetHost::Ip(_) => None,
    };
    let namespace = options
        .namespace
        .clone()
        .or_else(|| from_name.map(|(_, namespace)| namespace.to_owned()));
    let service = options
        .service
        .clone()
        .or_else(|| from_name.map(|(service, _)| service.to_owned()));
    namespace.zip(service).context(
        "Cloud Map discovery needs a target named <service>.<namespace>, or both names given",
    )
}

/// What the upstream knows now, to serialize (JSON for a debug route): the service's name,
/// how discovery stands, and every endpoint with its state (`healthy`, `ejected`, `stale`),
/// requests in flight and recent failures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    service: String,
    discovery: Discovery,
    endpoints: Vec<EndpointReport>,
}

impl Upstream {
    /// Starts discovering `target` in the background and returns the handle; registers the
    /// upstream's metrics in `registry`. Must be called inside a Tokio runtime. `options` must
    /// pass [`Options::validate`].
    pub fn start(
        target: Target,
        options: Options,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let via = options
            .via
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .context("the Via value is not a valid header value")?;
        let shared = Shared::new(&options, via, registry);
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let prober = Prober {
            shared: Arc::clone(&shared),
            policy: options.probe.clone(),
        };
        tasks.spawn(prober.run(stop.clone()));
        if options.zone.enabled {
            let routing = Arc::new(ZoneRouting::new(&options.zone, registry));
            shared.endpoints.set_zone_routing(Arc::clone(&routing));
            if let LocalZone::FromTaskMetadata(uri) = options.zone.local.clone() {
                // Read once, off the start-up path; picks ignore zones until it is known.
                tokio::spawn(async move { routing.learn(&uri).await });
            }
        }
        match &target.host {
            TargetHost::Ip(ip) => {
                let fixed = BTreeSet::from([SocketAddr::new(*ip, target.port)]);
                shared.endpoints.apply(&fixed, Discovery::Fixed);
                shared.request_probe();
            }
            _ if options.source == Source::CloudMap => {
                let (namespace, service) = cloudmap_names(&target, &options.cloudmap)?;
                let refresher = Refresher {
                    lookup: CloudMap::new(
                        namespace,
                        service,
                        target.port,
                        options.cloudmap.clone(),
                        registry,
                    ),
                    shared: Arc::clone(&shared),
                    bounds: options.cloudmap.bounds(options.ttl.max),
                };
                tasks.spawn(refresher.run(stop.clone()));
            }
            TargetHost::Dns(name) => {
                let dns = Dns::new(
                    name,
                    options.record,
                    target.port,
                    options.dns_server,
                    options.dns_timeout,
                )?;
                let refresher = Refresher {
                    lookup: Membership::new(
                        dns,
                        options.membership_ttl,
                        Arc::clone(&shared.endpoints),
                    ),
                    shared: Arc::clone(&shared),
                    bounds: options.ttl,
                };
                tasks.spawn(refresher.run(stop.clone()));
            }
        }
        let caller = Caller {
            name: target.display_host(),
            shared,
            policy: options.retry,
            budget: options.retry.budget(),
            max_answer_bytes: options.max_answer_bytes,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                caller,
                tasks: tokio::sync::Mutex::new(Some(tasks)),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }

    /// Calls the upstream's `GET /` (with `Accept: application/json`) and decodes the answer
    /// with `decode`; an answer that does not decode is a failed attempt, retried elsewhere.
    pub async fn call<T, E>(
        &self,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<Reply<T>, CallError>
    where
        E: Into<DecodeError>,
    {
        self.inner.caller.call(decode).await
    }

    /// The service's name, as shown in messages.
    pub fn name(&self) -> &str {
        &self.inner.caller.name
    }

    /// How many endpoints are known now; a service is ready to call the upstream while this
    /// is above zero.
    pub fn known_endpoints(&self) -> usize {
        self.inner
            .caller
            .shared
            .endpoints
            .snapshot()
            .endpoints
            .len()
    }

    /// What the upstream knows now: discovery's state and every endpoint's.
    pub fn report(&self) -> Report {
        let endpoints = &self.inner.caller.shared.endpoints;
        Report {
            service: self.name().to_owned(),
            discovery: endpoints.snapshot().discovery.clone(),
            endpoints: endpoints.report(Instant::now()),
        }
    }

    /// Completes if a background task (discovery, probing) stops on its own; they only stop
    /// when told to, so a service should then exit rather than serve a frozen set.
    pub async fn failed(&self) -> anyhow::Error {
        let mut tasks = self.inner.tasks.lock().await;
        let ended = match tasks.as_mut() {
            Some(running) => running.join_next().await,
            None => None,
        };
        match ended {
            Some(ended) => {
                tasks.take();
                anyhow::anyhow!("a background task of the upstream stopped: {ended:?}")
            }
            None => std::future::pending().await,
        }
    }

    /// Stops discovery and probing and waits for them to end.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.inner.stop.cancel();
        if let Some(mut tasks) = self.inner.tasks.lock().await.take() {
            while let Some(ended) = tasks.join_next().await {
                ended.context("a background task of the upstream failed")?;
            }
        }
        Ok(())
    }
}
