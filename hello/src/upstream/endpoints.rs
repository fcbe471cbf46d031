//! The endpoint set: what `hello` currently knows about the `name` instances. Per endpoint:
//! requests in flight, consecutive failures, ejection. The set takes each DNS answer as a full
//! snapshot and keeps the state of the endpoints that stay; it does not look anything up
//! (`refresh` does) and does not choose (`picker` does).
//!
//! Ejection follows Envoy's outlier detection: `consecutive_5xx` (here any failed attempt:
//! connect error, timeout, 5xx), `base_ejection_time` doubled on each further ejection up to
//! a maximum, and `max_ejection_percent` so that a sick network cannot eject every endpoint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::dns::LookupError;

/// When endpoints are ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub after_failures: u32,
    /// Length of a first ejection; doubled for each further one.
    pub base_time: Duration,
    /// Longest ejection.
    pub max_time: Duration,
    /// Most endpoints ejected at once, in percent of the set; at least one may always be.
    pub max_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            after_failures: 3,
            base_time: Duration::from_secs(2),
            max_time: Duration::from_secs(30),
            max_percent: 50,
        }
    }
}

impl EjectionPolicy {
    /// How long the `ejections`-th ejection (counting from 1) lasts.
    pub fn duration(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(16);
        self.base_time
            .saturating_mul(1 << doublings)
            .min(self.max_time)
    }

    /// How many endpoints of a set of `size` may be ejected at once.
    pub fn max_ejected(&self, size: usize) -> usize {
        (size * self.max_percent as usize / 100).max(1)
    }
}

/// One `name` instance.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    /// `http://<addr>/`, built once.
    url: String,
    /// This endpoint's own connection pool, so that the endpoint's idle connections close when
    /// it leaves the set.
    pool: reqwest::Client,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Endpoint {
    fn new(addr: SocketAddr, pool: reqwest::Client) -> Self {
        Self {
            addr,
            url: format!("http://{addr}/"),
            pool,
            in_flight: AtomicUsize::new(0),
            health: Mutex::default(),
        }
    }

    /// The instance's address and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the instance's `GET /`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool to call this endpoint with.
    pub fn pool(&self) -> &reqwest::Client {
        &self.pool
    }

    /// Requests to this endpoint now in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// True while ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|until| until > now)
    }

    /// A success clears the failure streak and the ejection history.
    pub fn record_success(&self) {
        let mut health = self.health();
        health.consecutive_failures = 0;
        health.ejections = 0;
        health.ejected_until = None;
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // The lock guards plain counters that every write leaves consistent, so a poisoned
        // lock still holds good data.
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How discovery stands, for readiness, error messages and `/debug/endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Discovery {
    /// No answer yet.
    Pending,
    /// A fixed address was configured; there is nothing to look up.
    Fixed,
    /// The last lookup answered with these endpoints.
    Resolved,
    /// The last lookup answered that there are no instances (NXDOMAIN or no records).
    NoRecords {
        /// The answer.
        reason: Cause,
    },
    /// The last lookup failed; the endpoints, if any, are the last good answer's.
    Failing {
        /// The failure.
        reason: Cause,
    },
}

/// A lookup's error, kept whole for error chains and shown in words in `/debug/endpoints`.
#[derive(Debug, Clone)]
pub struct Cause(pub Arc<LookupError>);

impl From<LookupError> for Cause {
    fn from(error: LookupError) -> Self {
        Self(Arc::new(error))
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// What the request path reads: the endpoints and how discovery stands, replaced whole.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The endpoints, ordered by address.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// How discovery stands.
    pub discovery: Discovery,
}

/// What changed between two answers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Addresses that joined.
    pub added: Vec<SocketAddr>,
    /// Addresses that left.
    pub removed: Vec<SocketAddr>,
}

impl Diff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Compares the current endpoints with a new answer.
pub fn diff(current: &[Arc<Endpoint>], next: &BTreeSet<SocketAddr>) -> Diff {
    let now: BTreeSet<SocketAddr> = current.iter().map(|endpoint| endpoint.addr).collect();
    Diff {
        added: next.difference(&now).copied().collect(),
        removed: now.difference(next).copied().collect(),
    }
}

/// The set of endpoints, shared by the refresher (writer) and the request path (readers).
pub struct EndpointSet {
    current: watch::Sender<Arc<Snapshot>>,
    policy: EjectionPolicy,
    /// Held from counting the ejected endpoints to ejecting one, so that endpoints failing at
    /// the same moment cannot together exceed the cap. Taken on the failure path only.
    ejecting: Mutex<()>,
    new_pool: Box<dyn Fn() -> reqwest::Client + Send + Sync>,
}

impl EndpointSet {
    /// An empty set; `new_pool` makes each new endpoint's connection pool.
    pub fn new(
        policy: EjectionPolicy,
        new_pool: impl Fn() -> reqwest::Client + Send + Sync + 'static,
    ) -> Self {
        let empty = Snapshot {
            endpoints: Vec::new(),
            discovery: Discovery::Pending,
        };
        Self {
            current: watch::Sender::new(Arc::new(empty)),
            policy,
            ejecting: Mutex::new(()),
            new_pool: Box::new(new_pool),
        }
    }

    /// The current snapshot; cheap (one `Arc` clone), never waits on DNS.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Replaces the endpoints with `addrs`: endpoints that stay keep their state, new ones
    /// start healthy, and those that left are dropped with their connections once the
    /// requests in flight to them finish. Called by the one writer, the refresher.
    pub fn apply(&self, addrs: &BTreeSet<SocketAddr>, discovery: Discovery) -> Diff {
        let current = self.snapshot();
        let changes = diff(&current.endpoints, addrs);
        // Built before publishing, so that readers never wait on connection pools being made.
        let endpoints = addrs
            .iter()
            .map(|addr| {
                match current
                    .endpoints
                    .iter()
                    .find(|endpoint| endpoint.addr == *addr)
                {
                    Some(kept) => Arc::clone(kept),
                    None => Arc::new(Endpoint::new(*addr, (self.new_pool)())),
                }
            })
            .collect();
        self.current.send_replace(Arc::new(Snapshot {
            endpoints,
            discovery,
        }));
        changes
    }

    /// Records how discovery stands without changing the endpoints: a failed lookup keeps
    /// the last good ones (serve-stale).
    pub fn set_discovery(&self, discovery: Discovery) {
        self.current.send_if_modified(|snapshot| {
            if snapshot.discovery == discovery {
                return false;
            }
            *snapshot = Arc::new(Snapshot {
                endpoints: snapshot.endpoints.clone(),
                discovery,
            });
            true
        });
    }

    /// Records a failed attempt on `endpoint`. Returns the ejection's length when this failure
    /// ejected it.
    pub fn record_failure(&self, endpoint: &Endpoint, now: Instant) -> Option<Duration> {
        let _ejecting = self
            .ejecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot = self.snapshot();
        // Counted before taking this endpoint's lock: `is_ejected` locks each endpoint in turn.
        let ejected = snapshot
            .endpoints
            .iter()
            .filter(|other| !std::ptr::eq(other.as_ref(), endpoint) && other.is_ejected(now))
            .count();
        let mut health = endpoint.health();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        let already_ejected = health.ejected_until.is_some_and(|until| until > now);
        if already_ejected
            || health.consecutive_failures < self.policy.after_failures
            || ejected >= self.policy.max_ejected(snapshot.endpoints.len())
        {
            return None;
        }
        health.ejections = health.ejections.saturating_add(1);
        let duration = self.policy.duration(health.ejections);
        health.ejected_until = Some(now + duration);
        Some(duration)
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
                let ejected_for = health
                    .ejected_until
                    .and_then(|until| until.checked_duration_since(now));
                let state = match (ejected_for, stale) {
                    (Some(_), _) => EndpointState::Ejected,
                    (None, true) => EndpointState::Stale,
                    (None, false) => EndpointState::Healthy,
                };
                EndpointReport {
                    address: endpoint.addr,
                    state,
                    in_flight: endpoint.in_flight(),
                    consecutive_failures: health.consecutive_failures,
                    ejections: health.ejections,
                    ejected_for_ms: ejected_for.map(|left| left.as_millis()),
                }
            })
            .collect()
    }
}

/// An endpoint's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Takes traffic.
    Healthy,
    /// Takes no traffic until its ejection ends.
    Ejected,
    /// Takes traffic, but comes from the last good answer while DNS fails.
    Stale,
}

/// One endpoint as `/debug/endpoints` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Healthy, ejected or stale.
    pub state: EndpointState,
    /// Requests now in flight to it.
    pub in_flight: usize,
    /// Failed attempts since its last success.
    pub consecutive_failures: u32,
    /// Ejections since its last success.
    pub ejections: u32,
    /// Time left in the current ejection.
    pub ejected_for_ms: Option<u128>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            after_failures: 3,
            base_time: Duration::from_secs(2),
            max_time: Duration::from_secs(30),
            max_percent: 50,
        }
    }

    fn addrs(last_octets: &[u8]) -> BTreeSet<SocketAddr> {
        last_octets
            .iter()
            .map(|n| SocketAddr::from(([10, 0, 0, *n], 3000)))
            .collect()
    }

    fn set_of(last_octets: &[u8]) -> EndpointSet {
        let set = EndpointSet::new(policy(), reqwest::Client::new);
        set.apply(&addrs(last_octets), Discovery::Resolved);
        set
    }

    #[test]
    fn diff_reports_added_and_removed() {
        let set = set_of(&[1, 2, 3]);
        let changes = set.apply(&addrs(&[2, 3, 4]), Discovery::Resolved);
        assert_eq!(changes.added, vec![SocketAddr::from(([10, 0, 0, 4], 3000))]);
        assert_eq!(
            changes.removed,
            vec![SocketAddr::from(([10, 0, 0, 1], 3000))]
        );
    }

    #[test]
    fn the_same_answer_changes_nothing() {
        let set = set_of(&[1, 2, 3]);
        assert!(
            set.apply(&addrs(&[3, 2, 1]), Discovery::Resolved)
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_that_stay_keep_their_state() {
        let set = set_of(&[1, 2]);
        let first = Arc::clone(&set.snapshot().endpoints[0]);
        set.record_failure(&first, Instant::now());
        set.apply(&addrs(&[1, 2, 3]), Discovery::Resolved);
        let kept = &set.snapshot().endpoints[0];
        assert!(Arc::ptr_eq(kept, &first));
        assert_eq!(set.report(Instant::now())[0].consecutive_failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_time_that_doubles() {
        let set = set_of(&[1, 2, 3, 4]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        let now = Instant::now();
        assert_eq!(set.record_failure(&endpoint, now), None);
        assert_eq!(set.record_failure(&endpoint, now), None);
        assert_eq!(
            set.record_failure(&endpoint, now),
            Some(Duration::from_secs(2))
        );
        assert!(endpoint.is_ejected(now));

        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        assert!(!endpoint.is_ejected(now));
        // Still failing when the ejection ends: ejected again at once, for twice as long.
        assert_eq!(
            set.record_failure(&endpoint, now),
            Some(Duration::from_secs(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_ends_the_streak() {
        let set = set_of(&[1, 2]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        let now = Instant::now();
        set.record_failure(&endpoint, now);
        set.record_failure(&endpoint, now);
        endpoint.record_success();
        assert_eq!(set.record_failure(&endpoint, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_is_capped_by_share_of_the_set() {
        let set = set_of(&[1, 2, 3, 4]);
        let now = Instant::now();
        let endpoints = set.snapshot().endpoints.clone();
        let mut ejected = 0;
        for endpoint in &endpoints {
            for _ in 0..3 {
                if set.record_failure(endpoint, now).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
    }

    #[test]
    fn at_least_one_endpoint_may_be_ejected() {
        assert_eq!(policy().max_ejected(1), 1);
        assert_eq!(policy().max_ejected(3), 1);
        assert_eq!(policy().max_ejected(8), 4);
    }

    #[test]
    fn ejection_time_is_capped() {
        assert_eq!(policy().duration(1), Duration::from_secs(2));
        assert_eq!(policy().duration(3), Duration::from_secs(8));
        assert_eq!(policy().duration(40), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_discovery_marks_endpoints_stale() {
        let set = set_of(&[1]);
        set.set_discovery(Discovery::Failing {
            reason: LookupError::Failed {
                name: "name.internal".into(),
                reason: "timeout".into(),
            }
            .into(),
        });
        assert_eq!(set.report(Instant::now())[0].state, EndpointState::Stale);
        assert_eq!(set.snapshot().endpoints.len(), 1);
    }
}
