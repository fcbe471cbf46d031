//! Active health checking beside outlier detection (Envoy's pairing): a background task
//! probes the endpoints that need it (new ones that have never answered, ejected ones, and
//! failing ones the ejection cap keeps in) with `GET <path>` on their own connection pools,
//! off the request path, each probe with its own small timeout. An ejected endpoint comes
//! back only when its probe answers; an endpoint whose probe fails while others answer is
//! dead and is ejected whatever the cap.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Endpoint, EndpointSet, Probed, Tier};

/// Most probes in flight at once; the rest wait for the next round.
const MAX_PROBES_PER_ROUND: usize = 64;

/// How endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    /// The path asked for; any 2xx answer within the timeout is a pass.
    pub path: String,
    /// Time between rounds; a round also starts at once when new endpoints appear or one is
    /// suspected.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeLabels {
    result: &'static str,
}

/// The probing task's inputs.
pub struct Prober {
    set: Arc<EndpointSet>,
    policy: ProbePolicy,
    /// Probes by result: failed, ok.
    results: [Counter; 2],
}

impl Prober {
    /// A prober of `set`'s endpoints; registers `upstream_probes{result}` in `registry`.
    pub fn new(set: Arc<EndpointSet>, policy: ProbePolicy, registry: &mut Registry) -> Self {
        let family = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "upstream_probes",
            "Health probes of endpoints that are new, ejected or failing, by result",
            family.clone(),
        );
        let results =
            ["failed", "ok"].map(|result| family.get_or_create(&ProbeLabels { result }).clone());
        Self {
            set,
            policy,
            results,
        }
    }

    /// Probes until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if stop.run_until_cancelled(self.round()).await.is_none() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.policy.interval) => {}
                () = self.set.probe_requested() => {}
            }
        }
    }

    /// Probes every endpoint that needs it, at once, and applies the results.
    async fn round(&self) {
        let snapshot = self.set.snapshot();
        let now = Instant::now();
        for endpoint in &snapshot.endpoints {
            endpoint.pool().sweep(now);
        }
        let due: Vec<Arc<Endpoint>> = snapshot
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.needs_probe())
            .take(MAX_PROBES_PER_ROUND)
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let mut probes = JoinSet::new();
        for endpoint in due {
            let timeout = self.policy.timeout;
            probes.spawn(async move {
                let answered = probe(&endpoint, timeout).await;
                (endpoint, answered)
            });
        }
        let results = probes.join_all().await;
        let now = Instant::now();
        // Evidence that the network works: a probe answered, or an endpoint not probed is
        // taking traffic successfully.
        let others_answer = results.iter().any(|(_, answered)| *answered)
            || snapshot
                .endpoints
                .iter()
                .any(|endpoint| !endpoint.needs_probe() && endpoint.tier(now) == Tier::Ready);
        for (endpoint, answered) in results {
            self.results[usize::from(answered)].inc();
            match self.set.probed(&endpoint, answered, others_answer, now) {
                Probed::Unchanged => {}
                Probed::Readmitted => {
                    tracing::info!(endpoint = %endpoint.addr(), "endpoint answered its probe; back in service")
                }
                Probed::Ejected(at_least) => {
                    tracing::warn!(endpoint = %endpoint.addr(), ?at_least, "endpoint failed its probe while others answer; ejected")
                }
            }
        }
    }
}

/// One probe: true when the endpoint answers 2xx within `timeout`. The body is not read: the
/// connection closes with the answer rather than going back to the pool half-read.
async fn probe(endpoint: &Endpoint, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, endpoint.pool().send(&endpoint.probe_request(), None, Instant::now())).await,
        Ok(Ok(answer)) if answer.status().is_success()
    )
}
