//! Choosing an endpoint: power of two choices on requests in flight. Two endpoints are drawn
//! at random and the less loaded one wins; ties go to the first drawn, so equal load means a
//! uniform random choice. When the winner already has a request in flight, up to
//! [`EXTRA_PAIRS`] more pairs are drawn, and the first winner with none ends the search (the
//! least loaded of those drawn goes otherwise). A request on an endpoint that is already busy
//! needs a second connection there, and each endpoint's pool keeps as many as its recent peak
//! of requests in flight. With 32 requests over 128 endpoints, one pair in twenty draws two
//! busy endpoints: one pair alone would bring every endpoint to two requests at once within a
//! second, and so to two connections; the further pairs almost always find a free one, so
//! each keeps about one, and the load is spread more evenly too.
//!
//! Candidates come from the best tier that has any untried endpoint: ready ones first, then
//! doubtful ones (never answered, or cooling down after saying they are overloaded), then
//! ejected ones, so that with nothing better left a call still tries something rather than
//! nothing (Cloud Map fails open the same way). Without zones, a pair is first drawn from the
//! whole set, each draw kept only when ready and untried: a few draws find them in the usual
//! case, at a cost that does not grow with the set, and only when they do not are the tiers
//! counted (the pair is uniform among the ready, untried endpoints either way).

use std::net::SocketAddr;
use std::sync::Arc;

use rand::{Rng, RngExt};
use tokio::time::Instant;

use super::ZoneRouting;
use crate::endpoints::{Endpoint, Tier};

/// Pairs drawn after the first while the winner is busy.
const EXTRA_PAIRS: usize = 2;
/// Draws from the whole set for each endpoint of a pair, before the tiers are counted.
const QUICK_DRAWS: usize = 4;

/// Picks an endpoint for the next attempt, or `None` when every endpoint has been tried.
/// With zone-aware picking on, the zone to draw from is chosen first among the candidates
/// (`zone`). Allocates nothing without zones.
pub fn pick<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    zones: Option<&ZoneRouting>,
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    match zones {
        Some(routing) => pick_zoned(endpoints, routing, tried, now, rng),
        None => least_busy(|| {
            ready_pair(endpoints, tried, now, rng).or_else(|| tier_pair(endpoints, tried, now, rng))
        }),
    }
}

/// The winner of `draw`'s pair, and of up to [`EXTRA_PAIRS`] more while it is busy: the
/// first without a request in flight, or the least loaded (the earliest among equals).
fn least_busy<'a>(
    mut draw: impl FnMut() -> Option<&'a Arc<Endpoint>>,
) -> Option<&'a Arc<Endpoint>> {
    let mut winner = draw()?;
    for _ in 0..EXTRA_PAIRS {
        let load = winner.in_flight();
        if load == 0 {
            break;
        }
        match draw() {
            Some(other) if other.in_flight() < load => winner = other,
            Some(_) => {}
            None => break,
        }
    }
    Some(winner)
}

/// The less loaded of two ready, untried endpoints drawn from the whole set, or `None` when
/// [`QUICK_DRAWS`] draws for either found none (few such endpoints, or none).
fn ready_pair<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let n = endpoints.len();
    if n < 2 {
        return None;
    }
    let usable = |i: usize| {
        let endpoint = &endpoints[i];
        endpoint.tier(now) == Tier::Ready && !tried.contains(&endpoint.addr())
    };
    let first = (0..QUICK_DRAWS)
        .map(|_| rng.random_range(0..n))
        .find(|&i| usable(i))?;
    // A second index different from the first, uniformly.
    let second = (0..QUICK_DRAWS)
        .map(|_| (first + rng.random_range(1..n)) % n)
        .find(|&i| usable(i))?;
    Some(less_loaded(&endpoints[first], &endpoints[second]))
}

/// The less loaded of two endpoints drawn from the best tier among the untried ones: one pass
/// finds the tier and counts its candidates, a second finds the two drawn.
fn tier_pair<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let (best, count) = best_tier(endpoints, tried, now)?;
    let mut candidates = endpoints
        .iter()
        .filter(|endpoint| !tried.contains(&endpoint.addr()) && endpoint.tier(now) == best);
    if count == 1 {
        return candidates.next();
    }
    let first = rng.random_range(0..count);
    let second = (first + rng.random_range(1..count)) % count;
    let (low, high) = (first.min(second), first.max(second));
    let a = candidates.nth(low)?;
    let b = candidates.nth(high - low - 1)?;
    let (first, second) = if first < second { (a, b) } else { (b, a) };
    Some(less_loaded(first, second))
}

/// The best tier among the untried endpoints, and how many are in it, in one pass.
fn best_tier(
    endpoints: &[Arc<Endpoint>],
    tried: &[SocketAddr],
    now: Instant,
) -> Option<(Tier, usize)> {
    let mut best = None;
    let mut count = 0;
    for endpoint in endpoints.iter().filter(|e| !tried.contains(&e.addr())) {
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
    Some((best?, count))
}

/// With zones: the zone chosen among the best tier's candidates, then pairs drawn in it.
fn pick_zoned<'a, R: Rng + ?Sized>(
    endpoints: &'a [Arc<Endpoint>],
    routing: &ZoneRouting,
    tried: &[SocketAddr],
    now: Instant,
    rng: &mut R,
) -> Option<&'a Arc<Endpoint>> {
    let (best, _) = best_tier(endpoints, tried, now)?;
    let in_tier =
        |endpoint: &&Arc<Endpoint>| !tried.contains(&endpoint.addr()) && endpoint.tier(now) == best;
    let candidate_zones = endpoints
        .iter()
        .filter(in_tier)
        .map(|endpoint| endpoint.zone());
    let Some(choice) = routing.choose(endpoints.len(), candidate_zones, rng) else {
        return least_busy(|| power_of_two(endpoints.iter().filter(in_tier), rng));
    };
    let in_zone =
        |endpoint: &&Arc<Endpoint>| in_tier(endpoint) && endpoint.zone() == Some(choice.zone);
    let picked = least_busy(|| power_of_two(endpoints.iter().filter(in_zone), rng));
    if picked.is_some() {
        routing.count(choice.local);
    }
    picked
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
            Some(less_loaded(a, b))
        }
    }
}

/// `second` when it has fewer requests in flight than `first`, `first` otherwise.
fn less_loaded<'a>(first: &'a Arc<Endpoint>, second: &'a Arc<Endpoint>) -> &'a Arc<Endpoint> {
    if second.in_flight() < first.in_flight() {
        second
    } else {
        first
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
    async fn a_busy_winner_gives_way_to_a_free_endpoint_of_another_pair() {
        let set = set_of(8);
        let endpoints = set.snapshot().endpoints.clone();
        let _busy: Vec<_> = endpoints[..6].iter().map(|e| e.start()).collect();
        let counts = tally(&endpoints, &[], 1000);
        let free: usize = endpoints[6..]
            .iter()
            .map(|e| counts.get(&e.addr()).copied().unwrap_or(0))
            .sum();
        // One pair finds a free endpoint with probability 1 - 6/8 * 5/7 (46%); three pairs
        // 85%. Busy endpoints need a second connection, so they are passed over when the
        // further pairs find a free one.
        assert!(
            free > 750,
            "{free} of 1000 on the two free endpoints: {counts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_extra_pairs_still_prefer_the_less_busy() {
        let set = set_of(3);
        let endpoints = set.snapshot().endpoints.clone();
        // Every endpoint busy: the extra pairs are drawn, and the least loaded still wins.
        let _one: Vec<_> = (0..1).map(|_| endpoints[0].start()).collect();
        let _two: Vec<_> = (0..2).map(|_| endpoints[1].start()).collect();
        let _three: Vec<_> = (0..3).map(|_| endpoints[2].start()).collect();
        let counts = tally(&endpoints, &[], 300);
        assert_eq!(counts.get(&endpoints[2].addr()), None, "{counts:?}");
        assert!(counts[&endpoints[0].addr()] > counts[&endpoints[1].addr()]);
    }

    #[tokio::test(start_paused = true)]
    async fn few_ready_endpoints_in_a_large_set_are_found_and_spread_over() {
        let set = set_of(4);
        let ready: Vec<SocketAddr> = set.snapshot().endpoints.iter().map(|e| e.addr()).collect();
        // 124 more that never answered: the draws from the whole set rarely hit a ready one,
        // and the tiers are counted instead.
        let addrs: BTreeSet<SocketAddr> = (1..=128)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 3000)))
            .collect();
        set.apply(&addrs, Discovery::Resolved);
        let endpoints = set.snapshot().endpoints.clone();
        let counts = tally(&endpoints, &[], 2000);
        assert_eq!(
            counts.keys().copied().collect::<BTreeSet<_>>(),
            ready.iter().copied().collect::<BTreeSet<_>>()
        );
        for count in counts.values() {
            assert!((400..=600).contains(count), "{counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_ready_set_is_spread_over_evenly() {
        let set = set_of(128);
        let counts = tally(&set.snapshot().endpoints, &[], 12800);
        assert_eq!(counts.len(), 128);
        for count in counts.values() {
            assert!((50..=150).contains(count), "{counts:?}");
        }
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
