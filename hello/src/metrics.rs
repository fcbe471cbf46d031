//! Prometheus metrics, served as text on `GET /metrics`: requests, upstream attempts by
//! outcome, retries, ejections, DNS refreshes by result, and the endpoints by state.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::endpoints::{EndpointReport, EndpointState};

/// How a request to `hello` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// Answered with a name.
    Ok,
    /// Answered 503.
    Unavailable,
}

/// How one attempt to call `name` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// A name came back.
    Ok,
    /// No connection could be made.
    ConnectError,
    /// The attempt ran out of time.
    Timeout,
    /// `name` answered with a 5xx status.
    ServerError,
    /// `name` answered with a 4xx status: the request itself was refused.
    ClientError,
    /// Anything else: another status, a body that is not a name, a broken connection.
    BadResponse,
}

/// How one DNS refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsResult {
    /// Records came back.
    Ok,
    /// NXDOMAIN or no records: an answer with no instances.
    Negative,
    /// No answer: timeout, SERVFAIL, refused, network.
    Failed,
}

/// Label values in Prometheus's snake_case.
macro_rules! label_values {
    ($($kind:ty { $($variant:ident => $label:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                let label = match self { $(Self::$variant => $label),+ };
                EncodeLabelValue::encode(&label, encoder)
            }
        }
    )+};
}

label_values! {
    RequestOutcome { Ok => "ok", Unavailable => "unavailable" }
    AttemptOutcome {
        Ok => "ok",
        ConnectError => "connect_error",
        Timeout => "timeout",
        ServerError => "server_error",
        ClientError => "client_error",
        BadResponse => "bad_response",
    }
    DnsResult { Ok => "ok", Negative => "negative", Failed => "failed" }
    EndpointState { Healthy => "healthy", Ejected => "ejected", Stale => "stale" }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    outcome: RequestOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DnsLabels {
    result: DnsResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: EndpointState,
}

/// The service's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    retries: Counter,
    retries_refused: Counter,
    ejections: Counter,
    dns_refreshes: Family<DnsLabels, Counter>,
    endpoints: Family<StateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let attempts = Family::<AttemptLabels, Counter>::default();
        let retries = Counter::default();
        let retries_refused = Counter::default();
        let ejections = Counter::default();
        let dns_refreshes = Family::<DnsLabels, Counter>::default();
        let endpoints = Family::<StateLabels, Gauge>::default();

        let mut registry = Registry::with_prefix("hello");
        registry.register(
            "requests",
            "Requests to GET /, by outcome",
            requests.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Attempts to call name, by outcome",
            attempts.clone(),
        );
        registry.register(
            "upstream_retries",
            "Attempts after the first of a request",
            retries.clone(),
        );
        registry.register(
            "upstream_retries_refused",
            "Retries not made because the retry budget was spent",
            retries_refused.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected after consecutive failures",
            ejections.clone(),
        );
        registry.register(
            "dns_refreshes",
            "DNS lookups of the name service, by result",
            dns_refreshes.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints of the name service known now, by state",
            endpoints.clone(),
        );

        Self {
            registry,
            requests,
            attempts,
            retries,
            retries_refused,
            ejections,
            dns_refreshes,
            endpoints,
        }
    }
}

impl Metrics {
    /// Counts a request to `GET /`.
    pub fn request(&self, outcome: RequestOutcome) {
        self.requests
            .get_or_create(&RequestLabels { outcome })
            .inc();
    }

    /// Counts an attempt to call `name`.
    pub fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
    }

    /// Counts a retry made.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a retry the budget refused.
    pub fn retry_refused(&self) {
        self.retries_refused.inc();
    }

    /// Counts an ejection.
    pub fn ejection(&self) {
        self.ejections.inc();
    }

    /// Counts a DNS refresh.
    pub fn dns_refresh(&self, result: DnsResult) {
        self.dns_refreshes
            .get_or_create(&DnsLabels { result })
            .inc();
    }

    /// Renders the metrics in the Prometheus text format, with the endpoint gauges taken from
    /// `endpoints` at this moment.
    pub fn render(&self, endpoints: &[EndpointReport]) -> String {
        for state in [
            EndpointState::Healthy,
            EndpointState::Ejected,
            EndpointState::Stale,
        ] {
            let count = endpoints
                .iter()
                .filter(|endpoint| endpoint.state == state)
                .count();
            self.endpoints
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
