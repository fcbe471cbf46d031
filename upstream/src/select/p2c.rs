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

use super::ZoneRouting;
use crate::endpoints::Endpoint;

/// Picks an endpoint for the next attempt, or `None` when every endpoint has been tried.
/// With zone-aware picking on, the zone to draw from is chosen first among the candidates
/// (`zone`). Allocates nothing without zones: one pass finds the best tier and counts its
/// candidates, a second finds the two drawn.
pub fn pick<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    zones: Option<&ZoneRouting>,
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let untried = |endpoint: &&Arc<Endpoint>| !tried.contains(&endpoint.addr());
    // The best tier among the untried endpoints, and how many are in it, in one pass.
    let mut best = None;
    let mut count = 0;
    for endpoint in endpoints.iter().filter(untried) {
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
    let in_tier = |endpoint: &&Arc<Endpoint>| untried(endpoint) && endpoint.tier(now) == best;
    if let Some(routing) = zones
        && let Some(choice) = routing.choose(
            endpoints.len(),
            endpoints
                .iter()
                .filter(in_tier)
                .map(|endpoint| endpoint.zone()),
            rng,
        )
    {
        let in_zone =
            |endpoint: &&Arc<Endpoint>| in_tier(endpoint) && endpoint.zone() == Some(choice.zone);
        let picked = power_of_two(endpoints.iter().filter(in_zone), rng);
        if picked.is_some() {
            routing.count(choice.local);
        }
        return picked;
    }
    // Without zones: two distinct candidates drawn by index, found in one more pass.
    let mut candidates = endpoints.iter().filter(in_tier);
    if count == 1 {
        return candidates.next();
    }
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

/// Draws two distinct candidates uniformly and returns the one with fewer requests in flight.
fn power_of_two<'a, R: Rng + ?Sized>(
    candidates: impl Iterator<Item = &'a Arc<Endpoint>> + Clone,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let n = candidates.clone().count();
    match n {
        0 => None,
        1 => candidates.clone().next(),
        n => {
            let first = rng.random_range(0..n);
            // A second index different from the first, uniformly.
            let second = (first + rng.random_range(1..n)) % n;
            let a = candidates.clone().nth(first)?;
            let b = candidates.clone().nth(second)?;
            Some(if b.in_flight() < a.in_flight() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::endpoints::{Discovery, EjectionPolicy, EndpointSet, Recorded, Requests};
    use crate::transport::Pool;

    fn set_of(n: u8) -> EndpointSet {
        let policy = EjectionPolicy {
            after_failures: 1,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(10),
            max_percent: 100,
        };
        let set = EndpointSet::new(policy, Requests::new("/healthz", None), Pool::for_tests);
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
        tally_zoned(endpoints, None, tried, rounds)
    }

    fn tally_zoned(
        endpoints: &[Arc<Endpoint>],
        zones: Option<&ZoneRouting>,
        tried: &[SocketAddr],
        rounds: usize,
    ) -> HashMap<SocketAddr, usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let now = Instant::now();
        let mut counts = HashMap::new();
        for _ in 0..rounds {
            let endpoint = pick(endpoints, zones, tried, now, &mut rng).unwrap();
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
                None,
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
    async fn an_ejected_local_zone_spills_over_at_once() {
        use crate::select::ZonePolicy;

        let policy = EjectionPolicy {
            after_failures: 1,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(10),
            max_percent: 100,
        };
        let set = EndpointSet::new(policy, Requests::new("/healthz", None), Pool::for_tests);
        let zone_policy = ZonePolicy {
            local: Some("a".into()),
            ..ZonePolicy::default()
        };
        let routing = ZoneRouting::new(
            &zone_policy,
            &mut prometheus_client::registry::Registry::default(),
        )
        .unwrap();
        let addrs: BTreeSet<SocketAddr> = (1..=6)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 3000)))
            .collect();
        // Two endpoints in each of zones a, b, c: an even spread, every call stays in a.
        let zones: HashMap<SocketAddr, Arc<str>> = addrs
            .iter()
            .zip(["a", "a", "b", "b", "c", "c"])
            .map(|(addr, zone)| (*addr, Arc::from(zone)))
            .collect();
        set.apply_zoned(&addrs, &zones, Discovery::Resolved);
        let endpoints = set.snapshot().endpoints.clone();
        for endpoint in &endpoints {
            endpoint.record_success();
        }
        let local = tally_zoned(&endpoints, Some(&routing), &[], 200);
        assert_eq!(local.len(), 2, "zone a only: {local:?}");

        for endpoint in endpoints.iter().take(2) {
            assert!(matches!(
                set.record_failure(endpoint, Instant::now()),
                Recorded::Ejected(_)
            ));
        }
        let spilled = tally_zoned(&endpoints, Some(&routing), &[], 200);
        assert_eq!(spilled.len(), 4, "zones b and c: {spilled:?}");
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
