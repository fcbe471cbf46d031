//! What the set reports: each endpoint's state for a debug route, and the endpoints by state
//! as a gauge read at each scrape.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use super::endpoint::{EJECTED, PROVEN, Tier};
use super::set::{Discovery, EndpointSet};

/// An endpoint's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Takes traffic.
    Healthy,
    /// Has never answered: takes traffic only when no healthy endpoint is left, until a probe
    /// or a request proves it.
    Unproven,
    /// Said it is overloaded: takes traffic only when no healthy endpoint is left, for a
    /// moment.
    Cooling,
    /// Takes no traffic until a probe answers (unless nothing else is left).
    Ejected,
    /// Takes traffic, but comes from the last good answer while discovery fails.
    Stale,
}

impl EndpointState {
    /// Every state, for the metrics.
    pub const ALL: [Self; 5] = [
        Self::Healthy,
        Self::Unproven,
        Self::Cooling,
        Self::Ejected,
        Self::Stale,
    ];
}

/// One endpoint as `/debug/endpoints` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Availability zone, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its state.
    pub state: EndpointState,
    /// Requests now in flight to it.
    pub in_flight: usize,
    /// Its connections kept open for the next requests.
    pub idle_connections: usize,
    /// Failed attempts since its last success.
    pub consecutive_failures: u32,
    /// Ejections since its last success.
    pub ejections: u32,
    /// Its last health probe failed.
    pub probe_failed: bool,
    /// Time left before a probe may bring it back, while ejected.
    pub ejected_for_ms: Option<u128>,
}

impl EndpointSet {
    /// Registers the set's metrics in `registry`: ejections, and the endpoints by state, read
    /// from the set at each scrape.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected after consecutive failures",
            self.ejections().clone(),
        );
        registry.register_collector(Box::new(EndpointGauges(Arc::clone(self))));
    }

    /// Every endpoint's state, for `/debug/endpoints` and the metrics.
    pub fn report(&self, now: Instant) -> Vec<EndpointReport> {
        let snapshot = self.snapshot();
        let stale = matches!(snapshot.discovery, Discovery::Failing { .. });
        snapshot
            .endpoints
            .iter()
            .map(|endpoint| {
                let health = *endpoint.health();
                let flags = endpoint.flags.load(Ordering::Relaxed);
                let state = match (endpoint.tier(now), stale) {
                    (Tier::Ejected, _) => EndpointState::Ejected,
                    (_, true) => EndpointState::Stale,
                    (Tier::Doubtful, false) if flags & PROVEN == 0 => EndpointState::Unproven,
                    (Tier::Doubtful, false) => EndpointState::Cooling,
                    (Tier::Ready, false) => EndpointState::Healthy,
                };
                EndpointReport {
                    address: endpoint.addr,
                    zone: endpoint.zone().map(str::to_owned),
                    state,
                    in_flight: endpoint.in_flight(),
                    idle_connections: endpoint.pool.idle_count(),
                    consecutive_failures: health.consecutive_failures,
                    ejections: health.ejections,
                    probe_failed: health.probe_failed,
                    ejected_for_ms: health
                        .ejected_until
                        .filter(|_| flags & EJECTED != 0)
                        .map(|until| until.saturating_duration_since(now).as_millis()),
                }
            })
            .collect()
    }
}

impl EncodeLabelValue for EndpointState {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let label = match self {
            Self::Healthy => "healthy",
            Self::Unproven => "unproven",
            Self::Cooling => "cooling",
            Self::Ejected => "ejected",
            Self::Stale => "stale",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: EndpointState,
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
            "Endpoints of the upstream service known now, by state",
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
