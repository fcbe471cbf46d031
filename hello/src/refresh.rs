//! The background refresher: asks DNS off the request path, applies each answer to the
//! endpoint set, and schedules the next lookup at the answer's TTL clamped to the configured
//! bounds. A failed lookup keeps the last good endpoints (serve-stale, RFC 8767) and retries
//! with a backoff; a negative answer (NXDOMAIN, no records) is an answer and empties the set.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dns::{Dns, LookupError};
use crate::endpoints::{Discovery, EndpointSet};
use crate::metrics::{DnsResult, Metrics};

/// The TTL bounds.
#[derive(Debug, Clone, Copy)]
pub struct TtlBounds {
    /// Floor: no two lookups closer together than this.
    pub min: Duration,
    /// Ceiling: no answer kept longer than this.
    pub max: Duration,
}

impl TtlBounds {
    /// When to ask again after an answer with `ttl`.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min, self.max)
    }

    /// When to ask again after `failures` failed lookups in a row: the floor, doubled for each
    /// further failure, up to the ceiling.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }
}

/// The refresher's inputs.
pub struct Refresher {
    /// What to look up.
    pub dns: Dns,
    /// Where answers go.
    pub endpoints: Arc<EndpointSet>,
    /// The TTL bounds.
    pub bounds: TtlBounds,
    /// Notified by the request path when every endpoint is failing: refresh now, if the floor
    /// allows.
    pub wake: Arc<Notify>,
    /// Counts lookups.
    pub metrics: Arc<Metrics>,
}

impl Refresher {
    /// Refreshes until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0;
        loop {
            let asked = Instant::now();
            let delay = match self.dns.lookup().await {
                Ok(answer) => {
                    failures = 0;
                    self.metrics.dns_refresh(DnsResult::Ok);
                    self.apply(&answer.addrs, Discovery::Resolved);
                    self.bounds.clamp(answer.ttl)
                }
                Err(err @ LookupError::Negative { ttl, .. }) => {
                    failures = 0;
                    self.metrics.dns_refresh(DnsResult::Negative);
                    self.apply(
                        &Default::default(),
                        Discovery::NoRecords {
                            reason: err.to_string(),
                        },
                    );
                    self.bounds.clamp(ttl.unwrap_or_default())
                }
                Err(err @ LookupError::Failed { .. }) => {
                    failures += 1;
                    self.metrics.dns_refresh(DnsResult::Failed);
                    let kept = self.endpoints.snapshot().endpoints.len();
                    tracing::warn!(error = %err, kept, failures, "DNS refresh failed; keeping the last answer");
                    self.endpoints.set_discovery(Discovery::Failing {
                        reason: err.to_string(),
                    });
                    self.bounds.backoff(failures)
                }
            };
            let next = asked + delay;
            let earliest = asked + self.bounds.min;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
                () = async {
                    self.wake.notified().await;
                    tokio::time::sleep_until(earliest).await;
                } => tracing::debug!("refreshing early: every endpoint is failing"),
            }
        }
    }

    fn apply(
        &self,
        addrs: &std::collections::BTreeSet<std::net::SocketAddr>,
        discovery: Discovery,
    ) {
        let changes = self.endpoints.apply(addrs, discovery);
        if !changes.is_empty() {
            tracing::info!(
                name = self.dns.name(),
                added = ?changes.added,
                removed = ?changes.removed,
                endpoints = addrs.len(),
                "endpoints changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TtlBounds = TtlBounds {
        min: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    #[test]
    fn a_zero_ttl_waits_for_the_floor() {
        assert_eq!(BOUNDS.clamp(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn a_long_ttl_is_cut_to_the_ceiling() {
        assert_eq!(
            BOUNDS.clamp(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_ttl_within_bounds_is_kept() {
        assert_eq!(
            BOUNDS.clamp(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn failures_back_off_up_to_the_ceiling() {
        let delays: Vec<u64> = (1..=7).map(|n| BOUNDS.backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
