//! Which endpoints a tower balancer should hold. tonic's balanced channel and tower's p2c
//! choose among the services they hold that are ready, at random (tonic's connections report
//! no load), and tonic keeps calling an endpoint that refuses connections, since a failed
//! connect leaves its service ready with the error stashed for the next call. So the set they
//! are given must already be the choice: it has no tiers and no order of its own.
//!
//! Usable means proven (answered a probe or a call) and not ejected. When no endpoint is,
//! the set fails open as the crate's own picker and Cloud Map do: to the endpoints not
//! ejected that have not answered yet (new ones before their first probe, or all of them
//! while nothing answers and the ejection cap holds), and with every endpoint ejected, to
//! all of them. A balancer with nothing to hold would make each call wait, to its deadline,
//! for an endpoint; with the fallen-back set a call fails fast on a refusal or at its connect
//! timeout on a black hole, and succeeds as soon as an instance is back.
//!
//! Preferred zone first, as membership: when Envoy's zone-aware routing
//! ([`crate::ZonePolicy`], the picker's own rule) would keep every call in the caller's zone, only the local zone's
//! endpoints are held; when it would send a share elsewhere, a random choice among all of
//! them is the closest a balancer that ignores zones can come, so all are held.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::endpoints::Endpoint;
use crate::select::ZoneRouting;

/// How usable an endpoint is, best first; a balancer holds the best level present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// Proven and not ejected.
    Usable,
    /// Not ejected, has not answered yet.
    Unproven,
    /// Ejected.
    Ejected,
}

fn level(endpoint: &Endpoint) -> Level {
    if endpoint.is_ejected() {
        Level::Ejected
    } else if endpoint.is_proven() {
        Level::Usable
    } else {
        Level::Unproven
    }
}

/// The addresses a balancer should hold now, out of `endpoints` (the whole set).
pub fn usable(endpoints: &[Arc<Endpoint>], zones: Option<&ZoneRouting>) -> BTreeSet<SocketAddr> {
    let Some(best) = endpoints.iter().map(|endpoint| level(endpoint)).min() else {
        return BTreeSet::new();
    };
    let candidates = || {
        endpoints
            .iter()
            .filter(move |endpoint| level(endpoint) == best)
    };
    let local = zones
        .filter(|zones| zones.keeps_calls_local(endpoints.len(), candidates().map(|e| e.zone())))
        .map(ZoneRouting::local);
    candidates()
        .filter(|endpoint| local.is_none_or(|local| endpoint.zone() == Some(local)))
        .map(|endpoint| endpoint.addr())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use tokio::time::Instant;

    use crate::endpoints::{Discovery, EndpointSet};

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 3000))
    }

    fn addrs(last_octets: &[u8]) -> BTreeSet<SocketAddr> {
        last_octets.iter().map(|n| addr(*n)).collect()
    }

    /// A set of endpoints 10.0.0.1, 10.0.0.2, ... in `zones` (one entry each, `None` for
    /// unknown).
    fn set_in(zones: &[Option<&str>]) -> (EndpointSet, Vec<Arc<Endpoint>>) {
        let set = EndpointSet::for_tests();
        let all: BTreeSet<SocketAddr> = (1..=zones.len() as u8).map(addr).collect();
        let zoned: HashMap<SocketAddr, Arc<str>> = all
            .iter()
            .zip(zones)
            .filter_map(|(addr, zone)| Some((*addr, Arc::from((*zone)?))))
            .collect();
        set.apply_zoned(&all, &zoned, Discovery::Resolved);
        let endpoints = set.snapshot().endpoints.clone();
        (set, endpoints)
    }

    fn set_of(n: usize) -> (EndpointSet, Vec<Arc<Endpoint>>) {
        set_in(&vec![None; n])
    }

    /// Ejects `endpoint` as dead: its probe failed while others answer.
    fn eject(set: &EndpointSet, endpoint: &Endpoint) {
        set.probed(endpoint, false, true, Instant::now());
        assert!(endpoint.is_ejected());
    }

    fn local(zone: &str) -> ZoneRouting {
        let policy = crate::select::ZonePolicy {
            local: Some(zone.into()),
            ..crate::select::ZonePolicy::default()
        };
        ZoneRouting::new(
            &policy,
            &mut prometheus_client::registry::Registry::default(),
        )
        .unwrap()
    }

    #[test]
    fn proven_endpoints_not_ejected_are_usable() {
        let (set, endpoints) = set_of(4);
        for endpoint in &endpoints[..3] {
            endpoint.record_success();
        }
        eject(&set, &endpoints[0]);
        assert_eq!(usable(&endpoints, None), addrs(&[2, 3]));
    }

    #[test]
    fn with_none_usable_the_unproven_are_held_then_all() {
        let (set, endpoints) = set_of(3);
        assert_eq!(
            usable(&endpoints, None),
            addrs(&[1, 2, 3]),
            "none proven yet"
        );
        eject(&set, &endpoints[0]);
        assert_eq!(usable(&endpoints, None), addrs(&[2, 3]));
        eject(&set, &endpoints[1]);
        eject(&set, &endpoints[2]);
        assert_eq!(usable(&endpoints, None), addrs(&[1, 2, 3]), "all ejected");
        assert!(usable(&[], None).is_empty());
    }

    #[test]
    fn the_local_zone_alone_is_held_while_routing_would_keep_every_call_there() {
        let zones = [
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            Some("c"),
        ];
        let (set, endpoints) = set_in(&zones);
        for endpoint in &endpoints {
            endpoint.record_success();
        }
        let zone = local("a");
        assert_eq!(usable(&endpoints, Some(&zone)), addrs(&[1, 2]));
        // One of a's two ejected: a holds 1 of 5, under its third of the callers; a share
        // of the calls would leave the zone, so all five are held.
        eject(&set, &endpoints[0]);
        assert_eq!(usable(&endpoints, Some(&zone)), addrs(&[2, 3, 4, 5, 6]));
    }

    #[test]
    fn zones_are_ignored_in_small_sets_with_unknown_zones_or_no_local_endpoint() {
        let zone = local("a");
        let proven = |(set, endpoints): (EndpointSet, Vec<Arc<Endpoint>>)| {
            endpoints
                .iter()
                .for_each(|endpoint| endpoint.record_success());
            (set, endpoints)
        };
        let (_small, endpoints) = proven(set_in(&[Some("a"), Some("b"), Some("c")]));
        assert_eq!(usable(&endpoints, Some(&zone)).len(), 3);
        let mut zones = vec![Some("a"), Some("a"), Some("b"), Some("b"), Some("c"), None];
        let (_unknown, endpoints) = proven(set_in(&zones));
        assert_eq!(usable(&endpoints, Some(&zone)).len(), 6);
        zones[5] = Some("c");
        zones[0] = Some("b");
        zones[1] = Some("b");
        let (_elsewhere, endpoints) = proven(set_in(&zones));
        assert_eq!(usable(&endpoints, Some(&zone)).len(), 6);
    }
}
