//! The endpoint set: what is known now about the upstream's instances. Per endpoint:
//! requests in flight, consecutive failures, ejection, whether it has ever answered, and a
//! cool-down after it said it is overloaded. The set takes each discovery answer as a full
//! snapshot and keeps the state of the endpoints that stay; it does not look anything up
//! (`refresh` does), does not probe (`probe` does) and does not choose (`picker` does).
//!
//! Ejection follows Envoy's outlier detection beside active health checking:
//! `consecutive_5xx` (here any failed attempt that is the endpoint's fault), an ejection whose
//! minimum length doubles on each further ejection, and `max_ejection_percent` so that a sick
//! network in front of every endpoint cannot eject them all. An ejected endpoint comes back
//! only when a health probe answers, never through a live request; an endpoint whose probe
//! fails while others answer is dead, not an outlier, and is ejected whatever the cap.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::dns::LookupError;
use super::http1;
use super::pool::Pool;
use super::zone::ZoneRouting;

/// When endpoints are ejected, and for how long at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub after_failures: u32,
    /// Shortest first ejection; doubled for each further one. An ejected endpoint comes back
    /// at the first successful probe after this.
    pub base_time: Duration,
    /// Longest minimum ejection.
    pub max_time: Duration,
    /// Most endpoints ejected at once as outliers, in percent of the set; at least one may
    /// always be. Endpoints whose probes fail while others answer do not count.
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
    /// How long the `ejections`-th ejection (counting from 1) lasts at least.
    pub fn duration(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(16);
        self.base_time
            .saturating_mul(1 << doublings)
            .min(self.max_time)
    }

    /// How many endpoints of a set of `size` may be ejected as outliers at once.
    pub fn max_ejected(&self, size: usize) -> usize {
        (size * self.max_percent as usize / 100).max(1)
    }
}

/// Flags of [`Endpoint::flags`].
const EJECTED: u8 = 1;
/// The endpoint has answered, a live request or a probe.
const PROVEN: u8 = 2;
/// Failing, but the ejection cap kept it in: a probe will tell whether it is dead.
const SUSPECT: u8 = 4;
/// Failures or ejections since the last live answer: a success has history to clear. Kept as a
/// flag so that the success path of a healthy endpoint takes no lock.
const TROUBLED: u8 = 8;

/// The picker's preference, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Has answered; not ejected, not cooling down.
    Ready = 0,
    /// Has never answered, or said it is overloaded a moment ago.
    Doubtful = 1,
    /// Ejected: tried only when nothing else is left.
    Ejected = 2,
}

/// What is asked of every endpoint, besides the call's `GET /`.
#[derive(Debug, Clone)]
pub struct Requests {
    /// The health probe's path.
    pub probe_path: Uri,
    /// A `Via` entry for calls.
    pub via: Option<HeaderValue>,
}

impl Requests {
    /// Probes of `probe_path` (`/` when it is not a path: the options were not validated),
    /// calls with `via`.
    pub fn new(probe_path: &str, via: Option<HeaderValue>) -> Self {
        Self {
            probe_path: probe_path.parse().unwrap_or_else(|_| Uri::from_static("/")),
            via,
        }
    }
}

/// One instance of the upstream.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    /// The availability zone, when discovery says (Cloud Map's API does, DNS does not).
    zone: Option<Arc<str>>,
    /// The call's request head (`GET /`), made once.
    call_head: Box<[u8]>,
    /// The health probe's request head, made once.
    probe_head: Box<[u8]>,
    /// This endpoint's own connection pool, so that the endpoint's idle connections close when
    /// it leaves the set.
    pool: Pool,
    in_flight: AtomicUsize,
    flags: AtomicU8,
    /// End of a cool-down, in milliseconds since `epoch`; 0 when none.
    cooling_until: AtomicU64,
    epoch: Instant,
    health: Mutex<Health>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    consecutive_failures: u32,
    ejections: u32,
    /// The earliest a probe may bring the endpoint back.
    ejected_until: Option<Instant>,
    /// The last probe failed.
    probe_failed: bool,
    /// Ejected because its probe failed while others answered: dead, not an outlier.
    dead: bool,
}

impl Endpoint {
    fn new(
        addr: SocketAddr,
        zone: Option<Arc<str>>,
        pool: Pool,
        requests: &Requests,
        epoch: Instant,
    ) -> Self {
        // An address and port are always a valid header value.
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let accept = HeaderValue::from_static("application/json");
        Self {
            addr,
            zone,
            call_head: http1::request_head(
                &Uri::from_static("/"),
                &host,
                Some(&accept),
                requests.via.as_ref(),
            ),
            probe_head: http1::request_head(&requests.probe_path, &host, None, None),
            pool,
            in_flight: AtomicUsize::new(0),
            flags: AtomicU8::new(0),
            cooling_until: AtomicU64::new(0),
            epoch,
            health: Mutex::default(),
        }
    }

    /// The instance's address and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance's availability zone, when known.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The call's request head: `GET /` with `Host`, `Accept: application/json` and `Via`.
    pub fn call_head(&self) -> &[u8] {
        &self.call_head
    }

    /// The health probe's request head: `GET <probe path>` with `Host`.
    pub fn probe_head(&self) -> &[u8] {
        &self.probe_head
    }

    /// The connection pool to call this endpoint with.
    pub fn pool(&self) -> &Pool {
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

    /// How the picker should regard this endpoint at `now`. Lock-free.
    pub fn tier(&self, now: Instant) -> Tier {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & EJECTED != 0 {
            Tier::Ejected
        } else if flags & PROVEN == 0 || self.cooling(now) {
            Tier::Doubtful
        } else {
            Tier::Ready
        }
    }

    /// True during a cool-down; the clock is read only when there is one.
    fn cooling(&self, now: Instant) -> bool {
        let until = self.cooling_until.load(Ordering::Relaxed);
        until != 0 && until > self.millis(now)
    }

    /// True while ejected.
    pub fn is_ejected(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// True when a health probe should look at this endpoint: ejected, never answered, or
    /// failing while the cap keeps it in.
    pub fn needs_probe(&self) -> bool {
        let flags = self.flags.load(Ordering::Relaxed);
        flags & (EJECTED | SUSPECT) != 0 || flags & PROVEN == 0
    }

    /// A live answer: the failure streak ends, the endpoint is proven. An ejected endpoint
    /// stays ejected until a probe answers.
    pub fn record_success(&self) {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & (PROVEN | SUSPECT | TROUBLED) == PROVEN {
            return;
        }
        let mut health = self.health();
        health.consecutive_failures = 0;
        if flags & EJECTED == 0 {
            health.ejections = 0;
            self.set(TROUBLED, false);
        }
        self.set(PROVEN, true);
        self.set(SUSPECT, false);
    }

    /// The endpoint said it is overloaded: prefer others until `until`.
    pub fn cool_down(&self, until: Instant) {
        self.cooling_until
            .store(self.millis(until).max(1), Ordering::Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, flag: u8, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
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

/// What a failed attempt did to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted toward the streak.
    Counted,
    /// Ejected, for at least this long.
    Ejected(Duration),
    /// The streak is long enough, but the cap keeps the endpoint in: probe it.
    Suspect,
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
    pub endpoints: Endpoints,
    /// How discovery stands.
    pub discovery: Discovery,
}

/// The endpoints of a snapshot, ordered by address, and how picks among them weigh zones.
/// Reads as a slice of endpoints.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    list: Vec<Arc<Endpoint>>,
    zones: Option<Arc<ZoneRouting>>,
}

impl Endpoints {
    /// Zone-aware picking, when on.
    pub fn zone_routing(&self) -> Option<&ZoneRouting> {
        self.zones.as_deref()
    }
}

impl Deref for Endpoints {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = &'a Arc<Endpoint>;
    type IntoIter = std::slice::Iter<'a, Arc<Endpoint>>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
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
    /// Zone-aware picking, set once at start when on.
    zones: std::sync::OnceLock<Arc<ZoneRouting>>,
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
            endpoints: Endpoints::default(),
            discovery: Discovery::Pending,
        };
        Self {
            current: watch::Sender::new(Arc::new(empty)),
            policy,
            requests,
            epoch: Instant::now(),
            ejecting: Mutex::new(()),
            new_pool: Box::new(new_pool),
            zones: std::sync::OnceLock::new(),
        }
    }

    /// Turns zone-aware picking on for the snapshots to come.
    pub fn set_zone_routing(&self, routing: Arc<ZoneRouting>) {
        let _ = self.zones.set(routing);
    }

    /// The current snapshot; cheap (one `Arc` clone), never waits on discovery.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
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
                    )),
                }
            })
            .collect();
        self.current.send_replace(Arc::new(Snapshot {
            endpoints: Endpoints {
                list: endpoints,
                zones: self.zones.get().cloned(),
            },
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
        health.ejections = health.ejections.saturating_add(1);
        let duration = self.policy.duration(health.ejections);
        health.ejected_until = Some(now + duration);
        health.dead = dead;
        endpoint.set(EJECTED, true);
        endpoint.set(TROUBLED, true);
        endpoint.set(SUSPECT, false);
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
            endpoint.set(PROVEN, true);
            endpoint.set(SUSPECT, false);
            if endpoint.is_ejected() && health.ejected_until.is_none_or(|until| now >= until) {
                endpoint.set(EJECTED, false);
                return Probed::Readmitted;
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

/// What a probe's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// Nothing worth a log line.
    Unchanged,
    /// An ejected endpoint came back.
    Readmitted,
    /// A dead endpoint was ejected, for at least this long.
    Ejected(Duration),
}

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
        let set = EndpointSet::new(
            policy(),
            Requests::new("/healthz", None),
            crate::upstream::test_pool,
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
