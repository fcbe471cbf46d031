//! The upstream's metrics, registered by the upstream itself into the registry its caller
//! gives (linkerd's `Resolver::with_metrics`): attempts by outcome, retries, ejections, DNS
//! refreshes by result, and the endpoints by state, read from the set at each scrape.
//!
//! Each labelled counter is resolved once here, so counting on the request path is one atomic
//! add, with no label lookup.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::endpoints::{EndpointSet, EndpointState};

/// How one attempt to call the upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AttemptOutcome {
    /// An answer came back.
    Ok,
    /// No connection could be made.
    ConnectError,
    /// The attempt ran out of time.
    Timeout,
    /// The instance answered with a 5xx status.
    ServerError,
    /// The instance answered with a 4xx status other than 429.
    ClientError,
    /// The instance said it is overloaded: 429, or 503 with `Retry-After`.
    Overloaded,
    /// Anything else: another status, an answer too large or that does not decode, a broken
    /// connection.
    BadResponse,
    /// A hedge answered first, and this attempt was abandoned.
    LostToHedge,
}

impl AttemptOutcome {
    const ALL: [Self; 8] = [
        Self::Ok,
        Self::ConnectError,
        Self::Timeout,
        Self::ServerError,
        Self::ClientError,
        Self::Overloaded,
        Self::BadResponse,
        Self::LostToHedge,
    ];
}

/// How one DNS refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DnsResult {
    /// Records came back.
    Ok,
    /// NXDOMAIN or no records: an answer with no instances.
    Negative,
    /// No answer: timeout, SERVFAIL, refused, network.
    Failed,
}

impl DnsResult {
    const ALL: [Self; 3] = [Self::Ok, Self::Negative, Self::Failed];
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
    AttemptOutcome {
        Ok => "ok",
        ConnectError => "connect_error",
        Timeout => "timeout",
        ServerError => "server_error",
        ClientError => "client_error",
        Overloaded => "overloaded",
        BadResponse => "bad_response",
        LostToHedge => "lost_to_hedge",
    }
    DnsResult { Ok => "ok", Negative => "negative", Failed => "failed" }
    EndpointState {
        Healthy => "healthy",
        Unproven => "unproven",
        Cooling => "cooling",
        Ejected => "ejected",
        Stale => "stale",
    }
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
struct ProbeLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: EndpointState,
}

/// The counters the upstream keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    attempts: [Counter; AttemptOutcome::ALL.len()],
    retries: Counter,
    retries_refused: Counter,
    ejections: Counter,
    dns_refreshes: [Counter; DnsResult::ALL.len()],
    probes: [Counter; 2],
    hedges: Counter,
    hedges_won: Counter,
    answers_too_large: Counter,
}

impl Metrics {
    /// Registers the upstream's metrics in `registry`; the endpoint gauges read `endpoints`
    /// at each scrape.
    pub(crate) fn register(registry: &mut Registry, endpoints: Arc<EndpointSet>) -> Self {
        let attempts = Family::<AttemptLabels, Counter>::default();
        let dns_refreshes = Family::<DnsLabels, Counter>::default();
        let probes = Family::<ProbeLabels, Counter>::default();
        let metrics = Self {
            attempts: AttemptOutcome::ALL
                .map(|outcome| attempts.get_or_create(&AttemptLabels { outcome }).clone()),
            retries: Counter::default(),
            retries_refused: Counter::default(),
            ejections: Counter::default(),
            dns_refreshes: DnsResult::ALL
                .map(|result| dns_refreshes.get_or_create(&DnsLabels { result }).clone()),
            probes: ["failed", "ok"]
                .map(|result| probes.get_or_create(&ProbeLabels { result }).clone()),
            hedges: Counter::default(),
            hedges_won: Counter::default(),
            answers_too_large: Counter::default(),
        };
        registry.register(
            "upstream_attempts",
            "Attempts to call name, by outcome",
            attempts,
        );
        registry.register(
            "upstream_retries",
            "Attempts after the first of a request",
            metrics.retries.clone(),
        );
        registry.register(
            "upstream_retries_refused",
            "Retries not made because the retry budget was spent",
            metrics.retries_refused.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected after consecutive failures",
            metrics.ejections.clone(),
        );
        registry.register(
            "dns_refreshes",
            "DNS lookups of the name service, by result",
            dns_refreshes,
        );
        registry.register(
            "upstream_probes",
            "Health probes of endpoints that are new, ejected or failing, by result",
            probes,
        );
        registry.register(
            "upstream_hedges",
            "Second attempts sent because the first was slow",
            metrics.hedges.clone(),
        );
        registry.register(
            "upstream_hedges_won",
            "Hedges that answered before the attempt they raced",
            metrics.hedges_won.clone(),
        );
        registry.register(
            "upstream_answers_too_large",
            "Answers refused for exceeding the byte limit",
            metrics.answers_too_large.clone(),
        );
        registry.register_collector(Box::new(EndpointGauges(endpoints)));
        metrics
    }

    /// Counts an attempt.
    pub(crate) fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].inc();
    }

    /// Counts a retry made.
    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a retry the budget refused.
    pub(crate) fn retry_refused(&self) {
        self.retries_refused.inc();
    }

    /// Counts an ejection.
    pub(crate) fn ejection(&self) {
        self.ejections.inc();
    }

    /// Counts a health probe.
    pub(crate) fn probe(&self, answered: bool) {
        self.probes[usize::from(answered)].inc();
    }

    /// Counts a hedge sent.
    pub(crate) fn hedge(&self) {
        self.hedges.inc();
    }

    /// Counts a hedge that answered first.
    pub(crate) fn hedge_won(&self) {
        self.hedges_won.inc();
    }

    /// Counts an answer refused for its size.
    pub(crate) fn answer_too_large(&self) {
        self.answers_too_large.inc();
    }

    /// Counts a DNS refresh.
    pub(crate) fn dns_refresh(&self, result: DnsResult) {
        self.dns_refreshes[result as usize].inc();
    }
}

/// `endpoints{state}`: the endpoints known now, counted by state at each scrape.
struct EndpointGauges(Arc<EndpointSet>);

impl fmt::Debug for EndpointGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointGauges")
    }
}

impl Collector for EndpointGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let report = self.0.report(Instant::now());
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "endpoints",
            "Endpoints of the name service known now, by state",
            None,
            gauge.metric_type(),
        )?;
        for state in EndpointState::ALL {
            let count = report
                .iter()
                .filter(|endpoint| endpoint.state == state)
                .count();
            let labels = StateLabels { state };
            ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
