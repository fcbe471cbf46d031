//! The background refresher: asks a discovery source ([`Lookup`]: DNS or Cloud Map's API) off
//! the request path, applies each answer to the endpoint set, and schedules the next lookup
//! at the answer's TTL clamped to the configured bounds. A negative answer (NXDOMAIN, no
//! records, no instances) is an answer and empties the set. A failed lookup, or a broken
//! answer (records for other names, a CNAME loop, instances without an address), keeps the
//! last good endpoints (serve-stale, RFC 8767) and is retried with a backoff while they are
//! served; with nothing to serve, it is retried at the floor, so that the service is back
//! as soon as its source is.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::set::{Discovery, EndpointSet};
use crate::lookup::{Lookup, LookupError, TtlBounds};

/// How one lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LookupResult {
    /// Records came back.
    Ok,
    /// NXDOMAIN or no records: an answer with no instances.
    Negative,
    /// No answer: timeout, SERVFAIL, refused, network.
    Failed,
    /// An answer that cannot be right: records for other names or types only, a CNAME loop,
    /// a reply to another question, instances without a usable address.
    Broken,
}

impl EncodeLabelValue for LookupResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let label = match self {
            Self::Ok => "ok",
            Self::Negative => "negative",
            Self::Failed => "failed",
            Self::Broken => "broken",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: LookupResult,
}

/// `dns_refreshes{result}`: the refresher's lookups, by result; each label resolved once.
#[derive(Debug, Clone)]
pub struct RefreshMetrics {
    results: [Counter; 4],
}

impl RefreshMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<ResultLabels, Counter>::default();
        registry.register(
            "dns_refreshes",
            "Lookups of the upstream's instances, by result",
            family.clone(),
        );
        let results = [
            LookupResult::Ok,
            LookupResult::Negative,
            LookupResult::Failed,
            LookupResult::Broken,
        ]
        .map(|result| family.get_or_create(&ResultLabels { result }).clone());
        Self { results }
    }

    fn count(&self, result: LookupResult) {
        self.results[result as usize].inc();
    }
}

/// The largest share of the floor added to a retry when there is nothing to serve.
const FLOOR_JITTER: f64 = 0.2;

/// The refresher's inputs.
pub struct Refresher<L> {
    /// What to look up.
    pub lookup: L,
    /// Where answers go, and where the request path asks for an early refresh.
    pub set: Arc<EndpointSet>,
    /// The TTL bounds; `min` must not exceed `max`.
    pub bounds: TtlBounds,
    /// The lookups' counters.
    pub metrics: RefreshMetrics,
}

impl<L: Lookup> Refresher<L> {
    /// Refreshes until `stop` is cancelled, a lookup under way included.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0;
        loop {
            let asked = Instant::now();
            let Some(result) = stop.run_until_cancelled(self.lookup.lookup()).await else {
                return;
            };
            let delay = match result {
                Ok(answer) => {
                    failures = 0;
                    self.metrics.count(LookupResult::Ok);
                    self.apply(&answer.addrs, &answer.zones, Discovery::Resolved);
                    self.bounds.clamp(answer.ttl)
                }
                Err(err) if err.is_answer() => {
                    failures = 0;
                    self.metrics.count(LookupResult::Negative);
                    let ttl = match &err {
                        LookupError::Negative { ttl, .. } => ttl.unwrap_or_default(),
                        _ => Duration::ZERO,
                    };
                    self.apply(
                        &BTreeSet::new(),
                        &HashMap::new(),
                        Discovery::NoRecords { reason: err.into() },
                    );
                    self.bounds.clamp(ttl)
                }
                Err(err) => {
                    failures += 1;
                    self.failed(err, failures, asked)
                }
            };
            let next = asked + delay;
            // A request for a refresh (every attempt of a call failed) may come early, but it
            // waits for the floor, and never cuts a failure backoff: a failing DNS server is
            // not asked faster because the endpoints fail too.
            let earliest = if failures == 0 {
                asked + self.bounds.min
            } else {
                next
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
                () = async {
                    self.set.refresh_requested().await;
                    tokio::time::sleep_until(earliest).await;
                } => tracing::debug!("refreshing early: a request found no instance answering"),
            }
        }
    }

    /// Records the `failures`-th failed lookup in a row (no answer, or a broken one), keeps
    /// the endpoints, and says when to ask again. While there are endpoints to serve, stale,
    /// after a backoff from the floor that doubles with each failure. With none, nothing can
    /// be served until an answer comes, and a backoff would only delay it: at the floor, plus
    /// up to a fifth of it so that callers started together do not ask together. A service
    /// with nothing to serve is ready within that, and one lookup, of its source coming back.
    /// The delay counts from `asked`, when the failed lookup began.
    fn failed(&self, err: LookupError, failures: u32, asked: Instant) -> Duration {
        let result = match err {
            LookupError::Broken { .. } => LookupResult::Broken,
            _ => LookupResult::Failed,
        };
        self.metrics.count(result);
        let kept = self.set.snapshot().endpoints.len();
        let delay = if kept == 0 {
            let floor = self.bounds.min;
            floor + floor.mul_f64(rand::rng().random_range(0.0..FLOOR_JITTER))
        } else {
            self.bounds.backoff(failures)
        };
        let retry_in = (asked + delay).saturating_duration_since(Instant::now());
        if kept == 0 {
            tracing::warn!(error = %err, failures, ?retry_in, "lookup failed; no endpoints to serve");
        } else {
            tracing::warn!(error = %err, kept, failures, ?retry_in, "lookup failed; serving the last answer");
        }
        self.set
            .set_discovery(Discovery::Failing { reason: err.into() });
        delay
    }

    fn apply(
        &self,
        addrs: &BTreeSet<SocketAddr>,
        zones: &HashMap<SocketAddr, Arc<str>>,
        discovery: Discovery,
    ) {
        let changes = self.set.apply_zoned(addrs, zones, discovery);
        if !changes.is_empty() {
            tracing::info!(
                name = self.lookup.name(),
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

    mod schedule {
        use super::super::*;
        use super::BOUNDS;

        use std::collections::VecDeque;
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use crate::endpoints::EndpointState;
        use crate::lookup::{Answer, RecordKind};

        /// Answers from a script, then the last one forever; counts the lookups and keeps
        /// when each was made.
        struct Script {
            answers: Mutex<VecDeque<Result<Answer, LookupError>>>,
            calls: Arc<AtomicUsize>,
            asked: Arc<Mutex<Vec<Instant>>>,
        }

        impl Lookup for Script {
            fn name(&self) -> &str {
                "name.internal."
            }

            async fn lookup(&self) -> Result<Answer, LookupError> {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.asked.lock().unwrap().push(Instant::now());
                let mut answers = self.answers.lock().unwrap();
                if answers.len() > 1 {
                    answers.pop_front().unwrap()
                } else {
                    answers[0].clone()
                }
            }
        }

        fn answer(ttl: u64, last_octets: &[u8]) -> Result<Answer, LookupError> {
            Ok(Answer {
                addrs: last_octets
                    .iter()
                    .map(|n| SocketAddr::from(([10, 0, 0, *n], 3000)))
                    .collect(),
                ttl: Duration::from_secs(ttl),
                zones: Default::default(),
            })
        }

        fn failure() -> Result<Answer, LookupError> {
            Err(LookupError::Failed {
                name: "name.internal".into(),
                reason: "SERVFAIL".into(),
            })
        }

        fn broken() -> Result<Answer, LookupError> {
            Err(LookupError::Broken {
                name: "name.internal".into(),
                reason: "CNAME loop: name.internal. -> b.internal. -> name.internal.".into(),
            })
        }

        fn nxdomain() -> Result<Answer, LookupError> {
            Err(LookupError::Negative {
                name: "name.internal".into(),
                record: RecordKind::A,
                nxdomain: true,
                ttl: Some(Duration::from_secs(5)),
            })
        }

        struct Running {
            calls: Arc<AtomicUsize>,
            asked: Arc<Mutex<Vec<Instant>>>,
            registry: Registry,
            endpoints: Arc<EndpointSet>,
            stop: CancellationToken,
            task: tokio::task::JoinHandle<()>,
        }

        fn start(script: Vec<Result<Answer, LookupError>>) -> Running {
            let calls = Arc::new(AtomicUsize::new(0));
            let asked = Arc::new(Mutex::new(Vec::new()));
            let set = Arc::new(EndpointSet::for_tests());
            let stop = CancellationToken::new();
            let mut registry = Registry::default();
            let refresher = Refresher {
                lookup: Script {
                    answers: Mutex::new(script.into()),
                    calls: Arc::clone(&calls),
                    asked: Arc::clone(&asked),
                },
                set: Arc::clone(&set),
                bounds: BOUNDS,
                metrics: RefreshMetrics::register(&mut registry),
            };
            let task = tokio::spawn(refresher.run(stop.clone()));
            Running {
                calls,
                asked,
                registry,
                endpoints: set,
                stop,
                task,
            }
        }

        impl Running {
            fn calls(&self) -> usize {
                self.calls.load(Ordering::SeqCst)
            }

            /// The time between each lookup and the next, from the `from`-th lookup on.
            fn gaps(&self, from: usize) -> Vec<Duration> {
                let asked = self.asked.lock().unwrap();
                asked[from..]
                    .windows(2)
                    .map(|pair| pair[1] - pair[0])
                    .collect()
            }

            fn metrics(&self) -> String {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
                text
            }
        }

        /// True when every gap is the floor plus at most a fifth of it.
        fn at_the_floor(gaps: &[Duration]) -> bool {
            let floor = BOUNDS.min;
            gaps.iter()
                .all(|gap| *gap >= floor && *gap <= floor.mul_f64(1.0 + FLOOR_JITTER))
        }

        /// Lets the paused clock run `millis` forward, the refresher working meanwhile.
        async fn run_for(millis: u64) {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_zero_ttl_is_asked_once_per_floor() {
            let running = start(vec![answer(0, &[1, 2])]);
            run_for(10_500).await;
            // t = 0, 1, ..., 10.
            assert_eq!(running.calls(), 11);
        }

        #[tokio::test(start_paused = true)]
        async fn the_next_lookup_waits_for_the_ttl() {
            let running = start(vec![answer(10, &[1, 2])]);
            run_for(9_500).await;
            assert_eq!(running.calls(), 1);
            run_for(1_000).await;
            assert_eq!(running.calls(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn failures_back_off_and_keep_the_last_answer() {
            let running = start(vec![answer(1, &[1, 2]), failure()]);
            // t = 0 answer; then failures at 1, 2, 4, 8, 16 (backoff 1, 2, 4, 8, 16 s).
            run_for(16_500).await;
            assert_eq!(running.calls(), 6);
            let snapshot = running.endpoints.snapshot();
            assert_eq!(snapshot.endpoints.len(), 2);
            assert!(matches!(snapshot.discovery, Discovery::Failing { .. }));
            let report = running.endpoints.report(Instant::now());
            assert!(
                report
                    .iter()
                    .all(|endpoint| endpoint.state == EndpointState::Stale)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_broken_answer_keeps_the_last_answer_and_backs_off() {
            let running = start(vec![answer(1, &[1, 2]), broken()]);
            // The answer at t = 0; broken answers at 1, 2, 4 and 8.
            run_for(8_500).await;
            assert_eq!(
                running.gaps(1),
                [
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                    Duration::from_secs(4)
                ]
            );
            let snapshot = running.endpoints.snapshot();
            assert_eq!(snapshot.endpoints.len(), 2);
            let Discovery::Failing { reason } = &snapshot.discovery else {
                panic!("{:?}", snapshot.discovery);
            };
            assert!(reason.0.to_string().contains("CNAME loop"), "{reason:?}");
            assert!(
                running
                    .metrics()
                    .contains(r#"dns_refreshes_total{result="broken"} 4"#),
                "{}",
                running.metrics()
            );
        }

        #[tokio::test(start_paused = true)]
        async fn with_nothing_to_serve_failures_are_retried_at_the_floor() {
            let running = start(vec![failure(), broken()]);
            run_for(20_000).await;
            let gaps = running.gaps(0);
            assert!(gaps.len() >= 16, "{gaps:?}");
            assert!(
                at_the_floor(&gaps),
                "no backoff, a fifth of jitter at most: {gaps:?}"
            );
            assert!(gaps.iter().any(|gap| *gap != gaps[0]), "jittered: {gaps:?}");
            assert!(matches!(
                running.endpoints.snapshot().discovery,
                Discovery::Failing { .. }
            ));
        }

        #[tokio::test(start_paused = true)]
        async fn once_emptied_failures_are_retried_at_the_floor() {
            let running = start(vec![answer(1, &[1, 2]), nxdomain(), failure()]);
            run_for(12_000).await;
            assert!(running.endpoints.snapshot().endpoints.is_empty());
            // Lookups: the answer at 0, NXDOMAIN at 1, failures from 6 (its 5 s TTL) on.
            let gaps = running.gaps(2);
            assert!(gaps.len() >= 4, "{gaps:?}");
            assert!(at_the_floor(&gaps), "{gaps:?}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_negative_answer_is_asked_again_after_its_ttl() {
            let running = start(vec![answer(1, &[1, 2]), nxdomain()]);
            run_for(11_500).await;
            // The answer at 0; NXDOMAIN at 1, 6 and 11 (its 5 s TTL).
            let ttl = Duration::from_secs(5);
            assert_eq!(running.gaps(1), [ttl, ttl]);
        }

        #[tokio::test(start_paused = true)]
        async fn nxdomain_empties_the_set() {
            let running = start(vec![answer(1, &[1, 2]), nxdomain()]);
            run_for(1_500).await;
            let snapshot = running.endpoints.snapshot();
            assert!(snapshot.endpoints.is_empty());
            assert!(matches!(snapshot.discovery, Discovery::NoRecords { .. }));
        }

        #[tokio::test(start_paused = true)]
        async fn a_wake_refreshes_early_but_not_before_the_floor() {
            let running = start(vec![answer(30, &[1, 2])]);
            run_for(100).await;
            assert_eq!(running.calls(), 1);

            running.endpoints.request_refresh();
            run_for(800).await;
            assert_eq!(running.calls(), 1, "the floor is 1 s");
            run_for(200).await;
            assert_eq!(running.calls(), 2, "woken: no waiting for the 30 s TTL");
        }

        #[tokio::test(start_paused = true)]
        async fn a_wake_does_not_cut_a_failure_backoff() {
            let running = start(vec![answer(1, &[1]), failure(), failure(), failure()]);
            // Lookups at t = 0 (answer), 1, 2 and 4 (failures); the next backoff is 4 s.
            run_for(4_100).await;
            assert_eq!(running.calls(), 4);
            running.endpoints.request_refresh();
            run_for(3_000).await;
            assert_eq!(running.calls(), 4);
        }

        #[tokio::test(start_paused = true)]
        async fn cancelling_stops_the_refresher() {
            let running = start(vec![answer(1, &[1])]);
            run_for(100).await;
            running.stop.cancel();
            let calls = Arc::clone(&running.calls);
            running.task.await.unwrap();
            let stopped_at = calls.load(Ordering::SeqCst);
            run_for(5_000).await;
            assert_eq!(calls.load(Ordering::SeqCst), stopped_at);
        }
    }
}
