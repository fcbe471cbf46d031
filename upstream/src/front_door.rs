//! The front door: [`Upstream`] wires discovery, the endpoint set, probing, selection and
//! calling for one upstream service, owns the background tasks, and is the one type a
//! service holds. Everything it does is done by the parts below it.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures_util::Stream;
use http::header::HeaderValue;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::discover::Change;

use crate::call::{Answer, CallError, CallOptions, Caller, DecodeError, Reply, Request};
use crate::discovery::{CloudMap, CloudMapOptions, Dns, Membership};
use crate::endpoints::{
    Discovery, EndpointReport, EndpointSet, Prober, RefreshMetrics, Refresher, Requests,
};
use crate::lookup::{Lookup, TtlBounds};
use crate::options::{Options, Source, Target, TargetHost};
use crate::select::ZoneRouting;
use crate::transport::{Outbox, Pool, PoolOptions};

/// A handle on one upstream service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    caller: Caller,
    set: Arc<EndpointSet>,
    /// The background tasks: the prober, and the refresher when there is one; taken by
    /// whoever waits for them.
    tasks: tokio::sync::Mutex<Option<JoinSet<()>>>,
    stop: CancellationToken,
    /// Stops the background tasks when the last handle drops.
    _stop_on_drop: DropGuard,
    /// The zone a discover stream prefers.
    /// Zone-aware routing, when on; the calls and the discover stream share it.
    zones: Option<Arc<ZoneRouting>>,
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
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let outbox = Outbox::for_runtime(&mut tasks, &stop);
        let set = Arc::new(EndpointSet::new(
            options.ejection,
            Requests::new(options.probe.kind.path().unwrap_or("/"), via.as_ref()),
            pool_builder(&options, outbox),
        ));
        set.register_metrics(registry);
        let prober = Prober::new(Arc::clone(&set), options.probe.clone(), registry);
        tasks.spawn(prober.run(stop.clone()));
        start_discovery(&target, &options, &set, registry, &mut tasks, &stop)?;
        let zones = ZoneRouting::new(&options.zone, registry).map(Arc::new);
        let call_options = CallOptions {
            retry: options.retry,
            hedge: options.hedge,
            answers: options.answers,
            max_answer_bytes: options.max_answer_bytes,
        };
        let caller = Caller::new(
            target.display_host(),
            Arc::clone(&set),
            zones.clone(),
            call_options,
            registry,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                caller,
                set,
                tasks: tokio::sync::Mutex::new(Some(tasks)),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
                zones,
            }),
        })
    }

    /// Sends `request` to one endpoint after another until one answers (with retries, hedges,
    /// ejection and the retry budget), and hands the answer to `decode` where it lies in the
    /// connection's buffer: nothing is copied unless the decoder copies it. An answer that
    /// does not decode is a failed attempt, retried elsewhere when the request may be sent
    /// again. Which statuses reach the decoder is the upstream's [`StatusPolicy`](crate::StatusPolicy).
    ///
    /// ```no_run
    /// # async fn example(upstream: upstream::Upstream) -> anyhow::Result<()> {
    /// use upstream::Request;
    ///
    /// let request = Request::get("/")?.with_header("accept", "application/json")?;
    /// let reply = upstream
    ///     .call(&request, |answer| std::str::from_utf8(answer.body()).map(str::to_owned))
    ///     .await?;
    /// println!("{} answered {}", reply.endpoint, reply.answer);
    /// # Ok(()) }
    /// ```
    pub async fn call<T, E>(
        &self,
        request: &Request,
        decode: impl Fn(Answer<'_>) -> Result<T, E>,
    ) -> Result<Reply<T>, CallError>
    where
        E: Into<DecodeError>,
    {
        self.inner.caller.call(request, decode).await
    }

    /// Sends `request` as [`Upstream::call`] does, and returns the answer copied out:
    /// status, headers and body.
    pub async fn send(&self, request: &Request) -> Result<Reply<http::Response<Bytes>>, CallError> {
        self.call(request, |answer| {
            Ok::<_, std::convert::Infallible>(answer.to_response())
        })
        .await
    }

    /// The usable endpoints as a `tower::discover::Discover` stream, for tonic's balanced
    /// channel or tower's p2c: `Insert(addr, make(addr))` when an endpoint becomes usable
    /// (proven and not ejected), `Remove(addr)` when it stops being (ejected, left
    /// discovery). When none is usable it fails open, to the endpoints not ejected, then to
    /// all; with zone-aware routing on, it holds only the local zone's endpoints while the
    /// zone has its share of them. While the stream is open every endpoint is probed each
    /// round, with [`ProbePolicy`](crate::ProbePolicy)'s kind (`Http2` for gRPC servers).
    ///
    /// The stream never ends and never fails, and keeps this upstream's background tasks
    /// running while it lives. The balancer makes the calls, so the crate's deadlines,
    /// retries and hedges do not apply: give each tonic `Endpoint` a `connect_timeout` and a
    /// `timeout`, and bound each call, since a balanced channel waits without bound for a
    /// ready endpoint.
    pub fn discover<S, F>(
        &self,
        make: F,
    ) -> impl Stream<Item = Result<Change<SocketAddr, S>, Infallible>> + Send + 'static
    where
        F: FnMut(SocketAddr) -> S + Send + 'static,
        S: Send + 'static,
    {
        let inner = &self.inner;
        let zones = inner.zones.clone();
        crate::discover::changes(inner.set.watch(), zones, make, self.clone())
    }

    /// The service's name, as shown in messages.
    pub fn name(&self) -> &str {
        self.inner.caller.name()
    }

    /// How many endpoints are known now; a service is ready to call the upstream while this
    /// is above zero.
    pub fn known_endpoints(&self) -> usize {
        self.inner.set.snapshot().endpoints.len()
    }

    /// What the upstream knows now: discovery's state and every endpoint's.
    pub fn report(&self) -> Report {
        let set = &self.inner.set;
        Report {
            service: self.name().to_owned(),
            discovery: set.snapshot().discovery.clone(),
            endpoints: set.report(Instant::now()),
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

/// Starts the refresher for `target`'s source, or sets the one fixed endpoint.
fn start_discovery(
    target: &Target,
    options: &Options,
    set: &Arc<EndpointSet>,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let refresh = Refresh { set, tasks, stop };
    match &target.host {
        TargetHost::Ip(ip) => {
            let fixed = BTreeSet::from([SocketAddr::new(*ip, target.port)]);
            set.apply(&fixed, Discovery::Fixed);
        }
        _ if options.source == Source::CloudMap => {
            let (namespace, service) = cloudmap_names(target, &options.cloudmap)?;
            let cloudmap = CloudMap::new(
                namespace,
                service,
                target.port,
                options.cloudmap.clone(),
                registry,
            );
            let bounds = options.cloudmap.bounds(options.ttl.max);
            refresh.spawn(cloudmap, bounds, registry);
        }
        TargetHost::Dns(name) => {
            let dns = Dns::new(
                name,
                options.record,
                target.port,
                options.dns_server,
                options.dns_timeout,
            )?;
            let members = Arc::clone(set);
            let probe_failing = Arc::new(move |addr| members.probe_failing(addr));
            let lookup = Membership::new(dns, options.membership_ttl, probe_failing);
            refresh.spawn(lookup, options.ttl, registry);
        }
    }
    Ok(())
}

/// Where a refresher goes: the set it keeps current, and the tasks it runs among.
struct Refresh<'a> {
    set: &'a Arc<EndpointSet>,
    tasks: &'a mut JoinSet<()>,
    stop: &'a CancellationToken,
}

impl Refresh<'_> {
    /// Spawns a refresher asking `lookup` within `bounds`; registers its counters.
    fn spawn<L: Lookup>(self, lookup: L, bounds: TtlBounds, registry: &mut Registry) {
        let refresher = Refresher {
            lookup,
            set: Arc::clone(self.set),
            bounds,
            metrics: RefreshMetrics::register(registry),
        };
        self.tasks.spawn(refresher.run(self.stop.clone()));
    }
}

/// Makes each endpoint's connection pool; all of them queue in `outbox`, when there is one.
fn pool_builder(
    options: &Options,
    outbox: Option<Arc<Outbox>>,
) -> impl Fn(SocketAddr) -> Pool + Send + Sync + 'static {
    let options = PoolOptions {
        connect_timeout: options.connect_timeout,
        idle_timeout: options.idle_timeout,
    };
    move |addr| Pool::new(addr, options, outbox.clone())
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
