//! The endpoint set: what is known now about the upstream's instances. It takes each
//! discovery answer as a full snapshot, published whole through a `watch` channel so that the
//! request path never waits on discovery, and keeps the state of the endpoints that stay. It
//! decides ejections under the cap ([`super::EjectionPolicy`]), holds the signals that wake
//! the refresher and the prober and the one that tells watchers of health changes
//! ([`SetWatch`]), and counts ejections. It does not look anything up
//! ([`super::Refresher`] does), does not probe ([`super::Prober`] does) and does not choose
//! (the picker does).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::ejection::{EjectionPolicy, Probed, Recorded};
use super::endpoint::{EJECTED, Endpoint, Health, PROVEN, Requests, SUSPECT, TROUBLED};
use crate::lookup::LookupError;
use crate::transport::Pool;

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
    requests: Requests,
    epoch: Instant,
    /// Held from counting the ejected endpoints to ejecting one, so that endpoints failing at
    /// the same moment cannot together exceed the cap. Taken on the failure path only.
    ejecting: Mutex<()>,
    new_pool: Box<dyn Fn(SocketAddr) -> Pool + Send + Sync>,
    /// Asks the refresher to look again before the TTL runs out.
    refresh: Notify,
    /// Asks the prober to look at the endpoints that need it now.
    probe: Notify,
    /// Told when an endpoint is first proven, ejected or readmitted: never on the success
    /// path of a healthy endpoint. Each endpoint holds a clone; each [`SetWatch`] a receiver.
    health: watch::Sender<()>,
    /// Ejections, by live failures and by probes.
    ejections: Counter,
}

impl EndpointSet {
    /// An empty set; `new_pool` makes each new endpoint's connection pool, `requests` says
    /// what is asked of each endpoint.
    pub fn new(
        policy: EjectionPolicy,
        requests: Requests,
        new_pool: impl Fn(SocketAddr) -> Pool + Send + Sync + 'static,
    ) -> Self {
        let empty = Snapshot {
            endpoints: Vec::new(),
            discovery: Discovery::Pending,
        };
        Self {
            current: watch::Sender::new(Arc::new(empty)),
            policy,
            requests,
            epoch: Instant::now(),
            ejecting: Mutex::new(()),
            new_pool: Box::new(new_pool),
            refresh: Notify::new(),
            probe: Notify::new(),
            health: watch::Sender::new(()),
            ejections: Counter::default(),
        }
    }

    /// An empty set with the default policy and pools, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new(
            EjectionPolicy::default(),
            Requests::new("/healthz", None),
            Pool::for_tests,
        )
    }

    /// Ejections so far, a counter the set's metrics register.
    pub(super) fn ejections(&self) -> &Counter {
        &self.ejections
    }

    /// Asks the refresher to look again before the TTL runs out: every attempt of a call
    /// failed, and the instances may have moved.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Completes when a refresh was requested.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Asks the prober to look at the endpoints that need it now, not at its next round.
    pub fn request_probe(&self) {
        self.probe.notify_one();
    }

    /// Completes when a probe was requested.
    pub async fn probe_requested(&self) {
        self.probe.notified().await;
    }

    /// The current snapshot; cheap (one `Arc` clone), never waits on discovery.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// A watch on the endpoints and their health, for consumers that recompute what they
    /// use on each change rather than read the set per request.
    pub fn watch(&self) -> SetWatch {
        SetWatch {
            endpoints: self.current.subscribe(),
            health: self.health.subscribe(),
        }
    }

    /// True while a [`SetWatch`] is held: someone outside the request path uses the
    /// endpoints, and their calls are not recorded here.
    pub fn is_watched(&self) -> bool {
        self.health.receiver_count() > 0
    }

    /// Completes once discovery has answered or failed for the first time (at once when it
    /// already has).
    pub async fn discovered(&self) {
        let mut current = self.current.subscribe();
        // The set holds the sender: while it is borrowed here, the wait cannot fail.
        let _ = current
            .wait_for(|snapshot| snapshot.discovery != Discovery::Pending)
            .await;
    }

    /// Replaces the endpoints with `addrs`: endpoints that stay keep their state, new ones
    /// start unproven, and those that left are dropped with their connections once the
    /// requests in flight to them finish. Called by the one writer, the refresher.
    pub fn apply(&self, addrs: &BTreeSet<SocketAddr>, discovery: Discovery) -> Diff {
        self.apply_zoned(addrs, &HashMap::new(), discovery)
    }

    /// [`EndpointSet::apply`], with the zones of the addresses that have one; an endpoint's
    /// zone is set when it joins (an address's subnet, so its zone, does not change).
    pub fn apply_zoned(
        &self,
        addrs: &BTreeSet<SocketAddr>,
        zones: &HashMap<SocketAddr, Arc<str>>,
        discovery: Discovery,
    ) -> Diff {
        let current = self.snapshot();
        let changes = diff(&current.endpoints, addrs);
        // Built before publishing, so that readers never wait on connection pools being made.
        let endpoints = addrs
            .iter()
            .map(|addr| {
                match current
                    .endpoints
                    .binary_search_by_key(addr, |endpoint| endpoint.addr)
                {
                    Ok(kept) => Arc::clone(&current.endpoints[kept]),
                    Err(_) => Arc::new(Endpoint::new(
                        *addr,
                        zones.get(addr).cloned(),
                        (self.new_pool)(*addr),
                        &self.requests,
                        self.epoch,
                        self.health.clone(),
                    )),
                }
            })
            .collect();
        self.current.send_replace(Arc::new(Snapshot {
            endpoints,
            discovery,
        }));
        if !changes.added.is_empty() {
            // New endpoints have never answered: probe them before they are relied on.
            self.request_probe();
        }
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

    /// True when the endpoint at `addr` is in the set and its last health probe failed.
    pub fn probe_failing(&self, addr: SocketAddr) -> bool {
        let snapshot = self.snapshot();
        snapshot
            .endpoints
            .binary_search_by_key(&addr, |endpoint| endpoint.addr)
            .is_ok_and(|at| snapshot.endpoints[at].health().probe_failed)
    }

    /// Records a failed attempt on `endpoint` that is the endpoint's fault.
    pub fn record_failure(&self, endpoint: &Endpoint, now: Instant) -> Recorded {
        let _ejecting = self
            .ejecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot = self.snapshot();
        // Outliers only: dead endpoints do not use up the cap. Counted before taking this
        // endpoint's lock, as each `health` locks an endpoint in turn.
        let outliers = snapshot
            .endpoints
            .iter()
            .filter(|other| {
                !std::ptr::eq(other.as_ref(), endpoint)
                    && other.is_ejected()
                    && !other.health().dead
            })
            .count();
        let mut health = endpoint.health();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        endpoint.set(TROUBLED, true);
        if endpoint.is_ejected() || health.consecutive_failures < self.policy.after_failures {
            return Recorded::Counted;
        }
        if outliers >= self.policy.max_ejected(snapshot.endpoints.len()) {
            endpoint.set(SUSPECT, true);
            return Recorded::Suspect;
        }
        Recorded::Ejected(self.eject(endpoint, &mut health, now, false))
    }

    fn eject(
        &self,
        endpoint: &Endpoint,
        health: &mut Health,
        now: Instant,
        dead: bool,
    ) -> Duration {
        self.ejections.inc();
        health.ejections = health.ejections.saturating_add(1);
        let duration = self.policy.duration(health.ejections);
        health.ejected_until = Some(now + duration);
        health.dead = dead;
        endpoint.set(EJECTED, true);
        endpoint.set(TROUBLED, true);
        endpoint.set(SUSPECT, false);
        self.health.send_replace(());
        duration
    }

    /// Records a health probe's result. `others_answer` says whether other endpoints answer
    /// (their probes or live requests): then a failed probe means this one is dead and it is
    /// ejected whatever the cap; when nothing answers, the network may be what is sick, and
    /// the cap holds. Returns what changed, for the log.
    pub fn probed(
        &self,
        endpoint: &Endpoint,
        answered: bool,
        others_answer: bool,
        now: Instant,
    ) -> Probed {
        let mut health = endpoint.health();
        if answered {
            health.probe_failed = false;
            health.dead = false;
            health.consecutive_failures = 0;
            let first_proof = !endpoint.is_proven();
            endpoint.set(PROVEN, true);
            endpoint.set(SUSPECT, false);
            if endpoint.is_ejected() && health.ejected_until.is_none_or(|until| now >= until) {
                endpoint.set(EJECTED, false);
                self.health.send_replace(());
                return Probed::Readmitted;
            }
            if first_proof {
                self.health.send_replace(());
            }
            return Probed::Unchanged;
        }
        health.probe_failed = true;
        if endpoint.is_ejected() {
            health.dead = others_answer;
            return Probed::Unchanged;
        }
        if others_answer {
            let duration = self.eject(endpoint, &mut health, now, true);
            return Probed::Ejected(duration);
        }
        Probed::Unchanged
    }
}

// === impl SetWatch ===

/// Wakes its holder when the endpoints change (an answer added or removed some, or
/// discovery's state moved) or when the health of one may have: first proven, ejected,
/// readmitted. Cooling down and counting failures do not wake it.
#[derive(Debug)]
pub struct SetWatch {
    endpoints: watch::Receiver<Arc<Snapshot>>,
    health: watch::Receiver<()>,
}

impl SetWatch {
    /// The current snapshot; the changes so far count as seen.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.health.mark_unchanged();
        Arc::clone(&self.endpoints.borrow_and_update())
    }

    /// Completes at the first change not yet seen; `false` when the set is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.endpoints.changed() => changed.is_ok(),
            changed = self.health.changed() => changed.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{EndpointState, Tier};

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
        let set = EndpointSet::new(
            policy(),
            Requests::new("/healthz", None),
            crate::transport::Pool::for_tests,
        );
        set.apply(&addrs(last_octets), Discovery::Resolved);
        set
    }

    fn fail(set: &EndpointSet, endpoint: &Endpoint, times: usize) -> Recorded {
        let now = Instant::now();
        (0..times)
            .map(|_| set.record_failure(endpoint, now))
            .last()
            .unwrap_or(Recorded::Counted)
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
    async fn new_endpoints_are_unproven_until_they_answer() {
        let set = set_of(&[1]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        assert_eq!(endpoint.tier(Instant::now()), Tier::Doubtful);
        assert!(endpoint.needs_probe());
        endpoint.record_success();
        assert_eq!(endpoint.tier(Instant::now()), Tier::Ready);
        assert!(!endpoint.needs_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_until_a_probe_answers() {
        let set = set_of(&[1, 2, 3, 4]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        assert_eq!(fail(&set, &endpoint, 2), Recorded::Counted);
        assert_eq!(
            fail(&set, &endpoint, 1),
            Recorded::Ejected(Duration::from_secs(2))
        );
        assert_eq!(endpoint.tier(Instant::now()), Tier::Ejected);

        // A live success does not bring it back; nor does a probe before the minimum time.
        endpoint.record_success();
        assert!(endpoint.is_ejected());
        let now = Instant::now();
        assert_eq!(set.probed(&endpoint, true, true, now), Probed::Unchanged);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            set.probed(&endpoint, true, true, Instant::now()),
            Probed::Readmitted
        );
        assert_eq!(endpoint.tier(Instant::now()), Tier::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn each_further_ejection_lasts_twice_as_long() {
        let set = set_of(&[1, 2, 3, 4]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        fail(&set, &endpoint, 3);
        tokio::time::advance(Duration::from_secs(2)).await;
        set.probed(&endpoint, true, true, Instant::now());
        assert_eq!(
            fail(&set, &endpoint, 3),
            Recorded::Ejected(Duration::from_secs(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_ends_the_streak() {
        let set = set_of(&[1, 2]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        fail(&set, &endpoint, 2);
        endpoint.record_success();
        assert_eq!(fail(&set, &endpoint, 1), Recorded::Counted);
    }

    #[tokio::test(start_paused = true)]
    async fn outlier_ejection_is_capped_by_share_of_the_set() {
        let set = set_of(&[1, 2, 3, 4]);
        let endpoints = set.snapshot().endpoints.clone();
        let results: Vec<Recorded> = endpoints.iter().map(|e| fail(&set, e, 3)).collect();
        let ejected = results
            .iter()
            .filter(|r| matches!(r, Recorded::Ejected(_)))
            .count();
        assert_eq!(ejected, 2, "50% of 4: {results:?}");
        assert_eq!(results[3], Recorded::Suspect);
        assert!(endpoints[3].needs_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_ejects_whatever_the_cap_when_others_answer() {
        let set = set_of(&[1, 2, 3, 4]);
        let endpoints = set.snapshot().endpoints.clone();
        for endpoint in &endpoints[..3] {
            fail(&set, endpoint, 3);
        }
        assert!(!endpoints[2].is_ejected(), "capped at 2 of 4");

        let now = Instant::now();
        assert!(matches!(
            set.probed(&endpoints[2], false, true, now),
            Probed::Ejected(_)
        ));
        // Marked dead, the ejected endpoints no longer use up the cap.
        set.probed(&endpoints[0], false, true, now);
        set.probed(&endpoints[1], false, true, now);
        assert!(matches!(fail(&set, &endpoints[3], 3), Recorded::Ejected(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn when_no_probe_answers_the_cap_holds() {
        let set = set_of(&[1, 2]);
        let endpoints = set.snapshot().endpoints.clone();
        let now = Instant::now();
        for endpoint in &endpoints {
            set.probed(endpoint, false, false, now);
        }
        assert!(endpoints.iter().all(|endpoint| !endpoint.is_ejected()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_endpoint_cools_down_without_ejection() {
        let set = set_of(&[1]);
        let endpoint = Arc::clone(&set.snapshot().endpoints[0]);
        endpoint.record_success();
        endpoint.cool_down(Instant::now() + Duration::from_secs(1));
        assert_eq!(endpoint.tier(Instant::now()), Tier::Doubtful);
        assert_eq!(set.report(Instant::now())[0].state, EndpointState::Cooling);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(endpoint.tier(Instant::now()), Tier::Ready);
    }

    /// Whether `watch` has a change not yet seen; marks everything seen.
    fn woken(watch: &mut SetWatch) -> bool {
        let woken = watch.endpoints.has_changed().unwrap() || watch.health.has_changed().unwrap();
        watch.snapshot();
        woken
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_wakes_on_proof_ejection_readmission_and_answers_only() {
        let set = set_of(&[1, 2, 3, 4]);
        let mut watch = set.watch();
        let endpoint = Arc::clone(&watch.snapshot().endpoints[0]);
        assert!(!woken(&mut watch));

        endpoint.record_success();
        assert!(woken(&mut watch), "first proof");
        endpoint.record_success();
        endpoint.cool_down(Instant::now() + Duration::from_secs(1));
        assert_eq!(fail(&set, &endpoint, 2), Recorded::Counted);
        assert!(
            !woken(&mut watch),
            "a healthy success, a cool-down, counted failures"
        );

        assert!(matches!(fail(&set, &endpoint, 1), Recorded::Ejected(_)));
        assert!(woken(&mut watch), "ejection");
        assert_eq!(
            set.probed(&endpoint, true, true, Instant::now()),
            Probed::Unchanged
        );
        assert!(!woken(&mut watch), "a probe that changes nothing");
        tokio::time::advance(Duration::from_secs(2)).await;
        set.probed(&endpoint, true, true, Instant::now());
        assert!(woken(&mut watch), "readmission");

        set.apply(&addrs(&[1, 2, 3]), Discovery::Resolved);
        assert!(woken(&mut watch), "an answer");
    }

    #[tokio::test(start_paused = true)]
    async fn the_set_is_watched_while_a_watch_is_held() {
        let set = set_of(&[1]);
        assert!(!set.is_watched());
        let watch = set.watch();
        assert!(set.is_watched());
        drop(watch);
        assert!(!set.is_watched());
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
