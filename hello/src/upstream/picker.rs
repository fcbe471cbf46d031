//! Choosing an endpoint: power of two choices on requests in flight. Two endpoints are drawn
//! at random and the less loaded one wins; ties go to the first drawn, so equal load means a
//! uniform random choice. Candidates come from the best tier that has any untried endpoint:
//! ready ones first, then doubtful ones (never answered, or cooling down after saying they
//! are overloaded), then ejected ones, so that with nothing better left a call still tries
//! something rather than nothing (Cloud Map fails open the same way).

use std::net::SocketAddr;
use std::sync::Arc;

use rand::{Rng, RngExt};
use tokio::time::Instant;

use super::endpoints::Endpoint;

/// Picks an endpoint for the next attempt, or `None` when every endpoint has been tried.
/// Allocates nothing: one pass finds the best tier and counts its candidates, a second finds
/// the two drawn.
pub fn pick<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let untried = |endpoint: &Arc<Endpoint>| !tried.contains(&endpoint.addr());
    let mut best = None;
    let mut count = 0;
    for endpoint in endpoints.iter().filter(|endpoint| untried(endpoint)) {
        let tier = endpoint.tier(now);
        match best {
            Some(current) if tier > current => {}
            Some(current) if tier == current => count += 1,
            _ => {
                best = Some(tier);
                count = 1;
            }
        }
    }
    let best = best?;
    let mut candidates = endpoints
        .iter()
        .filter(|endpoint| untried(endpoint) && endpoint.tier(now) == best);
    if count == 1 {
        return candidates.next();
    }
    // Two distinct candidates, uniformly; the one with fewer requests in flight wins, the first
    // drawn on a tie.
    let first = rng.random_range(0..count);
    let second = (first + rng.random_range(1..count)) % count;
    let (low, high) = (first.min(second), first.max(second));
    let a = candidates.nth(low)?;
    let b = candidates.nth(high - low - 1)?;
    let (first, second) = if first < second { (a, b) } else { (b, a) };
    Some(if second.in_flight() < first.in_flight() {
        second
    } else {
        first
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::upstream::endpoints::{Discovery, EjectionPolicy, EndpointSet, Recorded};

    fn set_of(n: u8) -> EndpointSet {
        let policy = EjectionPolicy {
            after_failures: 1,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(10),
            max_percent: 100,
        };
        let set = EndpointSet::new(policy, "/healthz", crate::upstream::test_pool);
        let addrs: BTreeSet<SocketAddr> = (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 3000)))
            .collect();
        set.apply(&addrs, Discovery::Resolved);
        for endpoint in &set.snapshot().endpoints {
            endpoint.record_success();
        }
        set
    }

    fn tally(
        endpoints: &[Arc<Endpoint>],
        tried: &[SocketAddr],
        rounds: usize,
    ) -> HashMap<SocketAddr, usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let now = Instant::now();
        let mut counts = HashMap::new();
        for _ in 0..rounds {
            let endpoint = pick(endpoints, tried, now, &mut rng).unwrap();
            *counts.entry(endpoint.addr()).or_default() += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn equal_load_spreads_evenly() {
        let set = set_of(3);
        let counts = tally(&set.snapshot().endpoints, &[], 3000);
        assert_eq!(counts.len(), 3);
        for count in counts.values() {
            assert!((850..=1150).contains(count), "{counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_busiest_endpoint_is_never_chosen_from_a_pair() {
        let set = set_of(3);
        let endpoints = set.snapshot().endpoints.clone();
        let _busy = endpoints[0].start();
        let counts = tally(&endpoints, &[], 300);
        // With three endpoints every pair that draws the busy one also draws an idle one.
        assert_eq!(counts.get(&endpoints[0].addr()), None, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_an_endpoint_not_yet_tried() {
        let set = set_of(3);
        let endpoints = set.snapshot().endpoints.clone();
        let tried = [endpoints[0].addr(), endpoints[1].addr()];
        let counts = tally(&endpoints, &tried, 50);
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            vec![endpoints[2].addr()]
        );
        let all: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr()).collect();
        assert!(
            pick(
                &endpoints,
                &all,
                Instant::now(),
                &mut StdRng::seed_from_u64(1)
            )
            .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_passed_over_unless_nothing_else_is_left() {
        let set = set_of(2);
        let endpoints = set.snapshot().endpoints.clone();
        let now = Instant::now();
        assert!(matches!(
            set.record_failure(&endpoints[0], now),
            Recorded::Ejected(_)
        ));
        let counts = tally(&endpoints, &[], 50);
        assert_eq!(counts.get(&endpoints[0].addr()), None);

        assert!(matches!(
            set.record_failure(&endpoints[1], now),
            Recorded::Ejected(_)
        ));
        let counts = tally(&endpoints, &[], 50);
        assert_eq!(counts.len(), 2, "all ejected: fail open");
    }

    #[tokio::test(start_paused = true)]
    async fn proven_endpoints_are_preferred_to_unproven_and_cooling_ones() {
        let set = set_of(3);
        set.apply(
            &(1..=4)
                .map(|i| SocketAddr::from(([10, 0, 0, i], 3000)))
                .collect(),
            Discovery::Resolved,
        );
        let endpoints = set.snapshot().endpoints.clone();
        endpoints[0].cool_down(Instant::now() + Duration::from_secs(5));
        let counts = tally(&endpoints, &[], 100);
        // 10.0.0.4 is new (unproven) and 10.0.0.1 is cooling: neither is chosen.
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(counts.get(&endpoints[3].addr()), None);
        assert_eq!(counts.get(&endpoints[0].addr()), None);
    }
}
