//! Cloud Map's API as a discovery source (`DISCOVERY=cloudmap`): another [`Lookup`] behind the
//! refresher, beside DNS. Each lookup asks `DiscoverInstancesRevision`, a cheap call whose
//! number moves when instances register or deregister, and calls `DiscoverInstances` only when
//! it moved, or when the last full answer is older than the full interval (health changes do
//! not move the revision). `DiscoverInstances` has no 8-record cap (up to 1,000 instances)
//! and carries each instance's attributes: `AWS_INSTANCE_IPV4`, `AWS_INSTANCE_PORT`,
//! `AVAILABILITY_ZONE`.
//!
//! Why a [`Lookup`] and not a task of its own: the refresher already owns what a second source
//! needs (serve-stale on failure with a backoff, the early refresh when every endpoint fails,
//! the diff and its log, probes of new endpoints). The lookup answers with a TTL of the poll
//! interval, and the refresher's bounds for this source are built from that interval.
//!
//! This module owns the SDK client (built on the first lookup, as loading the standard
//! configuration is asynchronous), the last revision seen and the `cloudmap_calls` counters.
//! It does not schedule (the refresher does) and keeps no endpoint state.
//!
//! Errors: `NamespaceNotFound`, `ServiceNotFound` and a list of no instances are answers (no
//! instances), as NXDOMAIN is; throttling, 5xx, timeouts and credential errors fail the
//! lookup, and the refresher keeps the last set. So does a list of instances none of which
//! can be called (no valid `AWS_INSTANCE_IPV4`, an `AWS_INSTANCE_PORT` that is not a port):
//! a broken registration, not a statement that there are no instances. Once a full answer
//! has come, each call waits a random part of the current interval first, so that many
//! callers polling together (a deployment) or failing together (throttling) spread out;
//! before one has come there is nothing to serve, and the refresher spreads the retries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::config::retry::RetryConfig;
use aws_sdk_servicediscovery::config::timeout::TimeoutConfig;
use aws_sdk_servicediscovery::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::types::{HealthStatusFilter, HttpInstanceSummary};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::RngExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::lookup::{Answer, Lookup, LookupError, TtlBounds};

/// The attribute ECS sets to the task's private IPv4 address.
pub const ATTRIBUTE_IPV4: &str = "AWS_INSTANCE_IPV4";
/// The attribute ECS sets to the container port, when the service registry names one.
pub const ATTRIBUTE_PORT: &str = "AWS_INSTANCE_PORT";
/// The attribute ECS sets to the task's availability zone.
pub const ATTRIBUTE_ZONE: &str = "AVAILABILITY_ZONE";
/// `DiscoverInstances` answers with at most this many instances.
const MAX_RESULTS: i32 = 1000;

/// How to ask Cloud Map's API.
#[derive(Debug, Clone)]
pub struct CloudMapOptions {
    /// The namespace's `HttpName`; `None`: the target's DNS name without its first label.
    pub namespace: Option<String>,
    /// The service's name; `None`: the first label of the target's DNS name.
    pub service: Option<String>,
    /// Only instances whose attributes have these values (`QueryParameters`), for example
    /// `ECS_TASK_DEFINITION_FAMILY=name` to pin a family.
    pub query: BTreeMap<String, String>,
    /// The account that owns a namespace shared with this one (`OwnerAccount`).
    pub owner_account: Option<String>,
    /// Time between revision polls; each waits a random fifth of it more, at most.
    pub poll_interval: Duration,
    /// Longest time between two full `DiscoverInstances` calls, even when the revision has
    /// not moved: health changes do not move it.
    pub full_interval: Duration,
    /// Bound on one API call, retries by the SDK included.
    pub timeout: Duration,
    /// The SDK's configuration (region, endpoint, credentials); `None`: the standard chain,
    /// loaded on the first lookup (`AWS_REGION`, `AWS_ENDPOINT_URL_SERVICEDISCOVERY` or
    /// `AWS_ENDPOINT_URL`, the ECS task role).
    pub sdk: Option<SdkConfig>,
}

impl Default for CloudMapOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            service: None,
            query: BTreeMap::new(),
            owner_account: None,
            poll_interval: Duration::from_secs(1),
            full_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            sdk: None,
        }
    }
}

impl CloudMapOptions {
    /// The refresher's bounds for this source: polls at the interval, failures back off from
    /// it up to `max`.
    pub fn bounds(&self, max: Duration) -> TtlBounds {
        TtlBounds {
            min: self.poll_interval,
            max: max.max(self.poll_interval),
        }
    }
}

/// Which call, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Revision,
    Instances,
}

/// How a call ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CallResult {
    Ok,
    NotFound,
    Throttled,
    Error,
}

impl EncodeLabelValue for Call {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let label = match self {
            Self::Revision => "discover_instances_revision",
            Self::Instances => "discover_instances",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

impl EncodeLabelValue for CallResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let label = match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Throttled => "throttled",
            Self::Error => "error",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    call: Call,
    result: CallResult,
}

/// What the lookups remember between two calls.
#[derive(Debug, Default)]
struct State {
    /// The last `DiscoverInstancesRevision` answer. Compared only with the next such answer:
    /// `DiscoverInstances`' own `InstancesRevision` need not be the same number.
    revision: Option<i64>,
    /// The last full answer and when it came.
    last: Option<(Instant, Answer)>,
    /// Failed lookups in a row, to scale the jitter with the refresher's backoff.
    failures: u32,
}

/// Looks up one Cloud Map service through the API.
pub struct CloudMap {
    /// `<service>.<namespace>`, for logs and messages.
    name: String,
    namespace: String,
    service: String,
    /// Used when an instance has no `AWS_INSTANCE_PORT`.
    port: u16,
    options: CloudMapOptions,
    client: OnceCell<Client>,
    state: Mutex<State>,
    calls: Family<CallLabels, Counter>,
}

impl CloudMap {
    /// A lookup of `namespace`/`service`, whose instances are called on `port` unless they
    /// register one; registers its counters in `registry`.
    pub fn new(
        namespace: String,
        service: String,
        port: u16,
        options: CloudMapOptions,
        registry: &mut Registry,
    ) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "cloudmap_calls",
            "Calls to Cloud Map's discovery API, by call and result",
            calls.clone(),
        );
        Self {
            name: format!("{service}.{namespace}"),
            namespace,
            service,
            port,
            options,
            client: OnceCell::new(),
            state: Mutex::default(),
            calls,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain values, each write complete: a poisoned lock still holds good data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let sdk = match &self.options.sdk {
                    Some(sdk) => sdk.clone(),
                    None => {
                        aws_config::defaults(BehaviorVersion::latest())
                            .http_client(https_client())
                            .load()
                            .await
                    }
                };
                client(&sdk, self.options.timeout)
            })
            .await
    }

    /// One lookup: a revision poll, and the full list when the revision moved or the last
    /// full answer is too old.
    async fn discover(&self) -> Result<Answer, LookupError> {
        let (jitter, known, last) = {
            let state = self.state();
            let interval = self
                .options
                .poll_interval
                .saturating_mul(1 << state.failures.min(5));
            let jitter = match state.last {
                // No full answer yet, or none since the service had no instances: nothing is
                // served until one comes, so no waiting.
                None => Duration::ZERO,
                Some(_) => interval.mul_f64(rand::rng().random_range(0.0..0.2)),
            };
            let last = state.last.clone();
            (jitter, state.revision, last)
        };
        tokio::time::sleep(jitter).await;
        let client = self.client().await;
        let poll = self.options.poll_interval;
        let fresh = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.options.full_interval);
        let revision = match fresh {
            // A full call is due anyway: no need to ask the revision first.
            None if known.is_some() => known,
            _ => Some(self.revision(client).await?),
        };
        if let Some((_, answer)) = fresh
            && revision == known
        {
            return Ok(Answer {
                ttl: poll,
                ..answer.clone()
            });
        }
        let answer = self.instances(client).await?;
        let mut state = self.state();
        state.revision = revision;
        state.last = Some((Instant::now(), answer.clone()));
        Ok(answer)
    }

    async fn revision(&self, client: &Client) -> Result<i64, LookupError> {
        let mut request = client
            .discover_instances_revision()
            .namespace_name(&self.namespace)
            .service_name(&self.service);
        if let Some(owner) = &self.options.owner_account {
            request = request.owner_account(owner);
        }
        let result = request.send().await;
        self.count(Call::Revision, &result);
        let output = result.map_err(|err| self.error(Call::Revision, &err))?;
        // A missing revision reads as 0: a later number moves it, and the full call every
        // `full_interval` catches the rest.
        Ok(output.instances_revision().unwrap_or(0))
    }

    async fn instances(&self, client: &Client) -> Result<Answer, LookupError> {
        let mut request = client
            .discover_instances()
            .namespace_name(&self.namespace)
            .service_name(&self.service)
            .health_status(HealthStatusFilter::HealthyOrElseAll)
            .max_results(MAX_RESULTS)
            .set_query_parameters((!self.options.query.is_empty()).then(|| {
                self.options
                    .query
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            }));
        if let Some(owner) = &self.options.owner_account {
            request = request.owner_account(owner);
        }
        let result = request.send().await;
        self.count(Call::Instances, &result);
        let output = result.map_err(|err| self.error(Call::Instances, &err))?;
        let instances = output.instances();
        if instances.is_empty() {
            return Err(LookupError::Unregistered {
                name: self.name.clone(),
                reason: "DiscoverInstances listed no instances".into(),
            });
        }
        let (answer, unusable) = self.answer(instances);
        if answer.addrs.is_empty() {
            return Err(LookupError::Broken {
                name: self.name.clone(),
                reason: format!(
                    "DiscoverInstances listed {} instances, none with a usable address: {}",
                    instances.len(),
                    unusable.join("; ")
                ),
            });
        }
        if !unusable.is_empty() {
            tracing::debug!(skipped = ?unusable, "instances without a usable address; skipped");
        }
        Ok(answer)
    }

    /// The endpoints of `instances`, each instance's IPv4 address and port (its own, or the
    /// target's), and its zone when it has one; and why each instance left out cannot be
    /// called, for the first few.
    fn answer(&self, instances: &[HttpInstanceSummary]) -> (Answer, Vec<String>) {
        const REASONS: usize = 3;
        let mut addrs = BTreeSet::new();
        let mut zones = HashMap::new();
        let mut unusable = Vec::new();
        for instance in instances {
            let attribute = |key: &str| {
                instance
                    .attributes()
                    .and_then(|attributes| attributes.get(key))
            };
            let addr = match self.endpoint(attribute(ATTRIBUTE_IPV4), attribute(ATTRIBUTE_PORT)) {
                Ok(addr) => addr,
                Err(reason) => {
                    if unusable.len() < REASONS {
                        let id = instance.instance_id().unwrap_or("an instance");
                        unusable.push(format!("{}: {reason}", shown(id)));
                    }
                    continue;
                }
            };
            addrs.insert(addr);
            if let Some(zone) = attribute(ATTRIBUTE_ZONE) {
                zones.insert(addr, Arc::from(zone.as_str()));
            }
        }
        let answer = Answer {
            addrs,
            ttl: self.options.poll_interval,
            zones,
        };
        (answer, unusable)
    }

    /// The address to call an instance on, from its attributes; without a port attribute,
    /// the target's port.
    fn endpoint(&self, ip: Option<&String>, port: Option<&String>) -> Result<SocketAddr, String> {
        let ip = ip.ok_or_else(|| format!("no {ATTRIBUTE_IPV4}"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ATTRIBUTE_IPV4} {:?} is not an IPv4 address", shown(ip)))?;
        let port = match port {
            None => self.port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("{ATTRIBUTE_PORT} {:?} is not a port", shown(port)))?,
        };
        Ok(SocketAddr::new(IpAddr::V4(ip), port))
    }

    fn count<T, E: ProvideErrorMetadata>(&self, call: Call, result: &Result<T, SdkError<E>>) {
        let result = match result {
            Ok(_) => CallResult::Ok,
            Err(err) => classify(err),
        };
        self.calls.get_or_create(&CallLabels { call, result }).inc();
    }

    fn error<E>(&self, call: Call, err: &SdkError<E>) -> LookupError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let what = match call {
            Call::Revision => "DiscoverInstancesRevision",
            Call::Instances => "DiscoverInstances",
        };
        let reason = format!("{what}: {}", DisplayErrorContext(err));
        match classify(err) {
            CallResult::NotFound => LookupError::Unregistered {
                name: self.name.clone(),
                reason,
            },
            _ => LookupError::Failed {
                name: self.name.clone(),
                reason,
            },
        }
    }
}

fn classify<E: ProvideErrorMetadata>(err: &SdkError<E>) -> CallResult {
    match err.code() {
        Some("NamespaceNotFound" | "ServiceNotFound") => CallResult::NotFound,
        Some(code)
            if code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code == "TooManyRequestsException" =>
        {
            CallResult::Throttled
        }
        _ => CallResult::Error,
    }
}

impl Lookup for CloudMap {
    fn name(&self) -> &str {
        &self.name
    }

    async fn lookup(&self) -> Result<Answer, LookupError> {
        let result = self.discover().await;
        let mut state = self.state();
        match &result {
            Err(err) if err.is_answer() => {
                // Gone: a service created again starts afresh, and its revision numbers may
                // repeat the old ones.
                *state = State::default();
            }
            Err(_) => state.failures = state.failures.saturating_add(1),
            Ok(_) => state.failures = 0,
        }
        result
    }
}

/// `text` cut to a length fit for a log line: attribute values run to 1,024 characters.
fn shown(text: &str) -> &str {
    const SHOWN: usize = 64;
    text.char_indices()
        .nth(SHOWN)
        .map_or(text, |(end, _)| &text[..end])
}

/// The one HTTPS client of the SDK: hyper 1 and rustls with ring, roots from the system's
/// store (`/etc/ssl/certs`; a `scratch` image needs the CA bundle copied in).
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The service client for `sdk`, with `timeout` on each operation. When an endpoint is
/// configured, the `data-` host prefix the SDK puts before the two discovery calls' host is
/// dropped ([`DropHostPrefix`]): the configured endpoint is where the calls go.
fn client(sdk: &SdkConfig, timeout: Duration) -> Client {
    // One retry loop, the refresher's: it keeps the last set meanwhile and backs off with
    // jitter, where the SDK's retries would add calls to a throttled API within one poll.
    let mut config = aws_sdk_servicediscovery::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(timeout)
                .connect_timeout(timeout)
                .build(),
        );
    if sdk.http_client().is_none() {
        config = config.http_client(https_client());
    }
    Client::from_conf(config.interceptor(DropHostPrefix).build())
}

/// Removes the endpoint prefix an operation set, before the endpoint is resolved, when an
/// endpoint is configured (`AWS_ENDPOINT_URL_SERVICEDISCOVERY`, `AWS_ENDPOINT_URL`, the
/// profile's `endpoint_url`, or in code): the calls go to that endpoint as it is. Decided per
/// call from the client's own configuration, as the service-specific variable is resolved
/// into it and not into the shared `SdkConfig`. The Rust SDK has no
/// `disable_host_prefix_injection` setting (other SDKs read
/// `AWS_DISABLE_HOST_PREFIX_INJECTION`); this does what it would.
#[derive(Debug)]
struct DropHostPrefix;

impl aws_sdk_servicediscovery::config::Intercept for DropHostPrefix {
    fn name(&self) -> &'static str {
        "DropHostPrefix"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_servicediscovery::config::RuntimeComponents,
        cfg: &mut aws_sdk_servicediscovery::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if cfg
            .load::<aws_types::endpoint_config::EndpointUrl>()
            .is_some()
        {
            cfg.interceptor_state()
                .unset::<aws_smithy_runtime_api::client::endpoint::EndpointPrefix>();
        }
        Ok(())
    }
}
