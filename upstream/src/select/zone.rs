//! Zone-aware picking, after Envoy's zone-aware routing: send as much traffic as possible to
//! endpoints in the caller's own availability zone while keeping the load per endpoint even.
//! With a share `u` of the endpoints in the local zone and a share `c` of the callers there,
//! every call stays local when `u >= c`; otherwise a share `u / c` stays local and the rest
//! goes to the other zones in proportion to their residual capacity (`u_z - c_z` where
//! positive). A caller does not know where its peers run, so it takes the callers to be spread
//! evenly over the zones the endpoints are in (`c = 1 / zones`), which is how ECS spreads a
//! service's tasks.
//!
//! Off below a minimum set size (Envoy's `min_cluster_size`, 6), when the local zone or any
//! candidate's zone is unknown (DNS says nothing of zones), and never at availability's cost:
//! the split is made among the candidates of the picker's best tier, so a local zone with
//! none left (empty, all ejected, all tried) spills over at once, as Envoy's panic mode does.
//!
//! This module owns the policy, the local zone (given by the caller, who reads the ECS task
//! metadata once) and the pick counters; [`super::pick`] asks it which zone to draw from.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::{Rng, RngExt};

/// Most zones a pick weighs; a Region has at most six availability zones. Candidates spread
/// over more zones than this (an address list that is not one Region's) are picked without
/// zones.
const MAX_ZONES: usize = 8;

/// When and where picks prefer the local zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePolicy {
    /// Prefer the local zone at all.
    pub enabled: bool,
    /// Fewest endpoints in the set for zone-aware picking; below it, picks ignore zones.
    pub min_size: usize,
    /// This caller's zone, such as `eu-west-1a`; `None` turns zone-aware picking off. On ECS,
    /// the task metadata's `AvailabilityZone`, read by the caller once at start.
    pub local: Option<String>,
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: 6,
            local: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Locality {
    Local,
    Remote,
}

impl EncodeLabelValue for Locality {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let label = match self {
            Self::Local => "local",
            Self::Remote => "remote",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PickLabels {
    zone: Locality,
}

/// The policy, the local zone and the pick counters.
#[derive(Debug)]
pub struct ZoneRouting {
    min_size: usize,
    local: Arc<str>,
    picks: [Counter; 2],
}

impl ZoneRouting {
    /// Routing by `policy`, or `None` when it is off or the local zone is unknown; registers
    /// `upstream_zone_picks` in `registry` when on.
    pub fn new(policy: &ZonePolicy, registry: &mut Registry) -> Option<Self> {
        let local = policy.local.as_deref().filter(|zone| !zone.is_empty());
        let local = Arc::from(local.filter(|_| policy.enabled)?);
        let family = Family::<PickLabels, Counter>::default();
        registry.register(
            "upstream_zone_picks",
            "Endpoints picked in this caller's zone and in others, when both zones are known",
            family.clone(),
        );
        tracing::info!(zone = %local, "zone-aware picking on");
        Some(Self {
            min_size: policy.min_size,
            local,
            picks: [Locality::Local, Locality::Remote]
                .map(|zone| family.get_or_create(&PickLabels { zone }).clone()),
        })
    }

    /// Among `candidates` (the zones of the endpoints that may be picked now, one entry per
    /// endpoint, `None` for an endpoint of unknown zone) of a set of `set_size`, the zone to
    /// draw from, or `None` to ignore zones. Allocates nothing.
    pub fn choose<'z, R: Rng + ?Sized>(
        &self,
        set_size: usize,
        candidates: impl Iterator<Item = Option<&'z str>>,
        rng: &mut R,
    ) -> Option<Choice<'z>> {
        if set_size < self.min_size {
            return None;
        }
        let mut counts = ZoneCounts::default();
        for zone in candidates {
            counts.add(zone?)?;
        }
        let zone = route(&self.local, &counts, rng)?;
        Some(Choice {
            zone,
            local: zone == &*self.local,
        })
    }

    /// True when every pick among `candidates` (as for [`ZoneRouting::choose`]) of a set of
    /// `set_size` would stay in the local zone: the rule is on for this set, and the local
    /// zone has at least its share of the candidates. A balancer that cannot weigh zones
    /// holds only the local zone's endpoints then.
    pub fn keeps_calls_local<'z>(
        &self,
        set_size: usize,
        candidates: impl Iterator<Item = Option<&'z str>>,
    ) -> bool {
        if set_size < self.min_size {
            return false;
        }
        let mut counts = ZoneCounts::default();
        for zone in candidates {
            if zone.and_then(|zone| counts.add(zone)).is_none() {
                return false;
            }
        }
        counts.keeps_local(&self.local)
    }

    /// This caller's zone.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Counts a pick made under a [`Choice`].
    pub fn count(&self, local: bool) {
        self.picks[usize::from(!local)].inc();
    }
}

/// Candidates per zone, on the stack.
#[derive(Debug, Default)]
pub struct ZoneCounts<'z> {
    zones: [(&'z str, usize); MAX_ZONES],
    len: usize,
}

impl<'z> ZoneCounts<'z> {
    /// Counts one candidate in `zone`; `None` past [`MAX_ZONES`] zones.
    pub fn add(&mut self, zone: &'z str) -> Option<()> {
        match self.zones[..self.len].iter_mut().find(|(z, _)| *z == zone) {
            Some((_, count)) => *count += 1,
            None if self.len < MAX_ZONES => {
                self.zones[self.len] = (zone, 1);
                self.len += 1;
            }
            None => return None,
        }
        Some(())
    }

    fn iter(&self) -> impl Iterator<Item = (&'z str, usize)> + '_ {
        self.zones[..self.len].iter().copied()
    }

    fn get(&self, zone: &str) -> Option<(&'z str, usize)> {
        self.iter().find(|(z, _)| *z == zone)
    }

    fn total(&self) -> usize {
        self.iter().map(|(_, count)| count).sum()
    }

    /// True when `local` has candidates and at least its callers' share of them, callers
    /// taken as spread evenly over the zones counted (`local / total >= 1 / zones`).
    fn keeps_local(&self, local: &str) -> bool {
        self.get(local)
            .is_some_and(|(_, count)| count * self.len >= self.total())
    }
}

/// A zone to draw the next endpoint from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'z> {
    /// The zone.
    pub zone: &'z str,
    /// Whether it is the caller's.
    pub local: bool,
}

/// Envoy's decision for one pick, callers taken as spread evenly over the zones in `counts`
/// (candidates per zone). `None` when no zone can be preferred: the local zone has no
/// candidate, or the candidates are all in one zone.
pub fn route<'z, R: Rng + ?Sized>(
    local: &str,
    counts: &ZoneCounts<'z>,
    rng: &mut R,
) -> Option<&'z str> {
    let (local, local_count) = counts.get(local)?;
    if counts.len < 2 {
        return None;
    }
    let total = counts.total();
    let upstream_share = |count: usize| count as f64 / total as f64;
    let caller_share = 1.0 / counts.len as f64;
    if counts.keeps_local(local)
        || rng.random_range(0.0..1.0) < upstream_share(local_count) / caller_share
    {
        return Some(local);
    }
    // Cross-zone: by residual capacity, the share each zone has beyond its callers' own.
    let remote = || counts.iter().filter(move |(zone, _)| *zone != local);
    let residual = |count: usize| (upstream_share(count) - caller_share).max(0.0);
    let sum: f64 = remote().map(|(_, count)| residual(count)).sum();
    if sum <= 0.0 {
        return remote().next().map(|(zone, _)| zone);
    }
    let mut draw = rng.random_range(0.0..sum);
    for (zone, count) in remote() {
        if draw < residual(count) {
            return Some(zone);
        }
        draw -= residual(count);
    }
    remote().last().map(|(zone, _)| zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use std::collections::BTreeMap;

    fn counts<'z>(zones: &[(&'z str, usize)]) -> ZoneCounts<'z> {
        let mut counts = ZoneCounts::default();
        for (zone, n) in zones {
            for _ in 0..*n {
                counts.add(zone).unwrap();
            }
        }
        counts
    }

    /// Shares of `rounds` picks by zone.
    fn split(
        local: &str,
        zones: &[(&'static str, usize)],
        rounds: usize,
    ) -> BTreeMap<&'static str, f64> {
        let counts = counts(zones);
        let mut rng = StdRng::seed_from_u64(3);
        let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
        for _ in 0..rounds {
            *tally
                .entry(route(local, &counts, &mut rng).unwrap())
                .or_default() += 1;
        }
        tally
            .into_iter()
            .map(|(zone, n)| (zone, n as f64 / rounds as f64))
            .collect()
    }

    #[test]
    fn an_even_spread_stays_local() {
        let shares = split("a", &[("a", 3), ("b", 3), ("c", 3)], 1000);
        assert_eq!(shares.get("a"), Some(&1.0));
    }

    #[test]
    fn a_larger_local_share_stays_local() {
        let shares = split("a", &[("a", 4), ("b", 2)], 1000);
        assert_eq!(shares.get("a"), Some(&1.0));
    }

    #[test]
    fn a_smaller_local_share_keeps_its_ratio_and_spills_by_residual_capacity() {
        // Upstream shares 1/6, 2/6, 3/6; callers 1/3 each. Local: (1/6)/(1/3) = 50 %. Residual:
        // b 0, c 1/6: every spilled call goes to c.
        let shares = split("a", &[("a", 1), ("b", 2), ("c", 3)], 4000);
        assert!((shares["a"] - 0.5).abs() < 0.03, "{shares:?}");
        assert!((shares["c"] - 0.5).abs() < 0.03, "{shares:?}");
        assert!(!shares.contains_key("b"), "{shares:?}");
    }

    #[test]
    fn no_local_candidate_or_one_zone_means_no_preference() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(route("a", &counts(&[("b", 3), ("c", 3)]), &mut rng), None);
        assert_eq!(route("a", &counts(&[("a", 3)]), &mut rng), None);
    }

    #[test]
    fn small_sets_and_unknown_zones_turn_it_off() {
        let mut registry = Registry::default();
        let policy = ZonePolicy {
            local: Some("a".into()),
            ..ZonePolicy::default()
        };
        let routing = ZoneRouting::new(&policy, &mut registry).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let zones = [Some("a"), Some("b"), Some("c")];
        assert!(routing.choose(5, zones.into_iter(), &mut rng).is_none());
        assert!(routing.choose(6, zones.into_iter(), &mut rng).is_some());
        let with_unknown = [Some("a"), None, Some("c")];
        assert!(
            routing
                .choose(6, with_unknown.into_iter(), &mut rng)
                .is_none()
        );
    }

    #[test]
    fn no_local_zone_or_disabled_means_no_routing() {
        let mut registry = Registry::default();
        assert!(ZoneRouting::new(&ZonePolicy::default(), &mut registry).is_none());
        let off = ZonePolicy {
            enabled: false,
            local: Some("a".into()),
            ..ZonePolicy::default()
        };
        assert!(ZoneRouting::new(&off, &mut registry).is_none());
    }

    #[test]
    fn more_zones_than_a_region_has_turn_it_off() {
        let mut counts = ZoneCounts::default();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        let added = names
            .iter()
            .filter(|zone| counts.add(zone).is_some())
            .count();
        assert_eq!(added, MAX_ZONES);
    }
}
