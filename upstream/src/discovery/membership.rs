//! Stable membership from capped DNS answers. Cloud Map's MULTIVALUE answers carry at most 8
//! healthy records, a random 8 when there are more; WEIGHTED answers carry one, at random.
//! Replacing the set with each such answer would churn it: endpoints leave and come back,
//! their connection pools and ejection state lost each time, and never more than 8 used.
//!
//! So when answers look capped, the members are every address seen in the answers of the last
//! `ttl`, and an address leaves when no answer has carried it for that long, or when its
//! health probe fails (the endpoint set says). An answer looks capped when it has exactly 8
//! records or exactly 1, and differs from the previous answer of the same size: a rotation.
//! An answer of 8 that does not change is the whole truth (exactly 8 instances), and so is an
//! answer of 2 that shrinks to 1 (a scale-down), so neither keeps departed instances. Once
//! answers of a size rotate, they are taken as capped while they keep that size.
//!
//! This module is a [`Lookup`] around another; it asks nothing itself.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::lookup::{Answer, Lookup, LookupError};

/// Record counts of capped answers: MULTIVALUE's cap, and WEIGHTED's one record.
const CAPPED_SIZES: [usize; 2] = [8, 1];

#[derive(Debug, Default)]
struct Seen {
    /// Each member and when an answer last carried it.
    members: HashMap<SocketAddr, Instant>,
    /// The previous answer's addresses.
    previous: BTreeSet<SocketAddr>,
    /// The size of the answers seen rotating, while they keep that size: an answer that
    /// repeats the previous one by chance does not end the rotation.
    rotating: Option<usize>,
}

/// Says whether the endpoint at an address fails its health probes: such a member leaves at
/// once, whatever the TTL. The endpoint set answers it in the service.
pub type ProbeFailing = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Keeps the members of capped answers for `ttl`; with a `ttl` of zero, passes answers through.
pub struct Membership<L> {
    inner: L,
    ttl: Duration,
    probe_failing: ProbeFailing,
    seen: Mutex<Seen>,
}

impl<L: Lookup> Membership<L> {
    /// Wraps `inner`; `probe_failing` says which members fail their probes.
    pub fn new(inner: L, ttl: Duration, probe_failing: ProbeFailing) -> Self {
        Self {
            inner,
            ttl,
            probe_failing,
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        // Plain values, each write complete: a poisoned lock still holds good data.
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The members after `answer`, at `now`.
    fn merge(&self, answer: Answer, now: Instant) -> Answer {
        let mut seen = self.seen();
        let size = answer.addrs.len();
        let capped = CAPPED_SIZES.contains(&size)
            && (seen.rotating == Some(size)
                || (seen.previous.len() == size && seen.previous != answer.addrs));
        seen.rotating = capped.then_some(size);
        seen.previous.clone_from(&answer.addrs);
        if !capped {
            seen.members = answer.addrs.iter().map(|addr| (*addr, now)).collect();
            return answer;
        }
        for addr in &answer.addrs {
            seen.members.insert(*addr, now);
        }
        let ttl = self.ttl;
        let probe_failing = &self.probe_failing;
        seen.members.retain(|addr, at| {
            now.saturating_duration_since(*at) < ttl || answer.addrs.contains(addr)
        });
        seen.members
            .retain(|addr, _| answer.addrs.contains(addr) || !probe_failing(*addr));
        Answer {
            addrs: seen.members.keys().copied().collect(),
            ..answer
        }
    }
}

impl<L: Lookup> Lookup for Membership<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn lookup(&self) -> Result<Answer, LookupError> {
        let result = self.inner.lookup().await;
        if self.ttl.is_zero() {
            return result;
        }
        match result {
            Ok(answer) => Ok(self.merge(answer, Instant::now())),
            Err(err) => {
                if err.is_answer() {
                    // No instances is the whole truth.
                    *self.seen() = Seen::default();
                }
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;

    impl Lookup for Never {
        fn name(&self) -> &str {
            "name.internal."
        }

        async fn lookup(&self) -> Result<Answer, LookupError> {
            unreachable!("the tests call merge")
        }
    }

    /// Gives its results in order.
    struct Scripted(Mutex<Vec<Result<Answer, LookupError>>>);

    impl Lookup for Scripted {
        fn name(&self) -> &str {
            "name.internal."
        }

        async fn lookup(&self) -> Result<Answer, LookupError> {
            self.0.lock().unwrap().remove(0)
        }
    }

    fn membership() -> Membership<Never> {
        Membership::new(Never, Duration::from_secs(60), Arc::new(|_| false))
    }

    fn answer(last_octets: impl IntoIterator<Item = u8>) -> Answer {
        Answer {
            addrs: last_octets
                .into_iter()
                .map(|n| SocketAddr::from(([10, 0, 0, n], 3000)))
                .collect(),
            ttl: Duration::from_secs(1),
            zones: HashMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rotating_answers_of_eight_build_the_whole_set() {
        let membership = membership();
        let now = Instant::now();
        membership.merge(answer(1..=8), now);
        let merged = membership.merge(answer(5..=12), now);
        assert_eq!(merged.addrs.len(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn members_unseen_for_the_ttl_leave() {
        let membership = membership();
        let start = Instant::now();
        membership.merge(answer(1..=8), start);
        membership.merge(answer(2..=9), start + Duration::from_secs(30));
        let merged = membership.merge(answer(3..=10), start + Duration::from_secs(61));
        assert!(
            !merged
                .addrs
                .contains(&SocketAddr::from(([10, 0, 0, 1], 3000)))
        );
        assert_eq!(merged.addrs.len(), 9, "2 was seen 31 s ago");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_answer_and_a_scale_down_are_the_whole_truth() {
        let membership = membership();
        let now = Instant::now();
        membership.merge(answer(1..=8), now);
        assert_eq!(membership.merge(answer(1..=8), now).addrs.len(), 8);
        membership.merge(answer(1..=2), now);
        assert_eq!(membership.merge(answer([1]), now).addrs.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_record_answers_that_rotate_converge_to_all() {
        let membership = membership();
        let now = Instant::now();
        let mut merged = membership.merge(answer([1]), now);
        // 3 twice in a row, as a random pick gives: still a rotation.
        for n in [2, 3, 3, 1, 4, 2] {
            merged = membership.merge(answer([n]), now);
        }
        assert_eq!(merged.addrs.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_answer_keeps_the_members_and_a_negative_one_resets_them() {
        let broken = LookupError::Broken {
            name: "name.internal".into(),
            reason: "no A record for name.internal. in an answer of 1 record".into(),
        };
        let nxdomain = LookupError::Negative {
            name: "name.internal".into(),
            record: crate::lookup::RecordKind::A,
            nxdomain: true,
            ttl: None,
        };
        let script = vec![
            Ok(answer(1..=8)),
            Ok(answer(5..=12)),
            Err(broken),
            Ok(answer(1..=8)),
            Err(nxdomain),
            Ok(answer(1..=8)),
        ];
        let membership = Membership::new(
            Scripted(Mutex::new(script)),
            Duration::from_secs(60),
            Arc::new(|_| false),
        );
        let mut sizes = Vec::new();
        for _ in 0..6 {
            sizes.push(membership.lookup().await.map(|answer| answer.addrs.len()));
        }
        let sizes: Vec<Option<usize>> = sizes.into_iter().map(Result::ok).collect();
        assert_eq!(
            sizes,
            [Some(8), Some(12), None, Some(12), None, Some(8)],
            "after the broken answer the rotation goes on; after NXDOMAIN it starts afresh"
        );
    }
}
