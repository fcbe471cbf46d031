//! hello's own EMF metrics, beside the request metrics every service writes: the upstream's
//! counters, read back from the metrics registry's text by name (so nothing here reaches into
//! the upstream's code), the endpoints known, and whether discovery is failing.

use common::emf::{Counters, Datum, FromCounter, Source};

use crate::AppState;

/// Each EMF count and the counter sample it is the increase of.
static COUNTERS: [FromCounter; 12] = [
    attempts("AttemptsOk", "ok"),
    attempts("AttemptsConnectError", "connect_error"),
    attempts("AttemptsTimeout", "timeout"),
    attempts("AttemptsServerError", "server_error"),
    attempts("AttemptsClientError", "client_error"),
    attempts("AttemptsOverloaded", "overloaded"),
    attempts("AttemptsBadResponse", "bad_response"),
    attempts("AttemptsLostToHedge", "lost_to_hedge"),
    counter("Retries", "hello_upstream_retries_total"),
    counter("RetriesRefused", "hello_upstream_retries_refused_total"),
    counter("Ejections", "hello_endpoint_ejections_total"),
    counter("Hedges", "hello_upstream_hedges_total"),
];

const fn attempts(metric: &'static str, outcome: &'static str) -> FromCounter {
    FromCounter {
        metric,
        sample: "hello_upstream_attempts_total",
        label: Some(("outcome", outcome)),
    }
}

const fn counter(metric: &'static str, sample: &'static str) -> FromCounter {
    FromCounter {
        metric,
        sample,
        label: None,
    }
}

/// The upstream's metrics for the EMF lines.
pub struct UpstreamMetrics {
    state: AppState,
    counters: Counters,
}

impl UpstreamMetrics {
    /// Reads the upstream of `state` and the registry it serves at `/metrics`.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            counters: Counters::new(&COUNTERS),
        }
    }
}

impl Source for UpstreamMetrics {
    fn collect(&mut self, out: &mut Vec<Datum>) {
        match self.state.encode_metrics() {
            Ok(text) => self.counters.collect(&text, out),
            Err(err) => tracing::warn!(error = %err, "cannot encode the metrics registry"),
        }
        let upstream = self.state.upstream();
        out.push(Datum::count(
            "EndpointsKnown",
            upstream.known_endpoints() as u64,
        ));
        // `/debug/endpoints` names discovery's state; `failing` is a last lookup that failed.
        let report = serde_json::to_value(upstream.report()).unwrap_or_default();
        let failing = report["discovery"]["state"] == "failing";
        out.push(Datum::count("DiscoveryFailing", u64::from(failing)));
    }
}
