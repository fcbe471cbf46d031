//! Zone-aware picking, after Envoy's zone-aware routing: send as much traffic as possible to
//! endpoints in the caller's own availability zone while keeping the load per endpoint even.
//! With a share `u` of the endpoints in the local zone and a share `c` of the callers there,
//! every call stays local when `u >= c`; otherwise a share `u / c` stays local and the rest
//! goes to the other zones in proportion to their residual capacity (`u_z - c_z` where
//! positive). hello does not know where its peers run, so it takes the callers to be spread
//! evenly over the zones the endpoints are in (`c = 1 / zones`), which is how ECS spreads a
//! service's tasks.
//!
//! Off below a minimum set size (Envoy's `min_cluster_size`, 6), when the local zone or any
//! candidate's zone is unknown (DNS says nothing of zones), and never at availability's cost:
//! the split is made among the candidates of the picker's best tier, so a local zone with
//! none left (empty, all ejected, all tried) spills over at once, as Envoy's panic mode does.
//!
//! This module owns the policy, the local zone (named, or read once from the ECS task metadata
//! endpoint) and the pick counters; `picker` asks it which zone to draw from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::{Rng, RngExt};

/// Where this caller's zone comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LocalZone {
    /// Unknown: zone-aware picking stays off.
    #[default]
    Unknown,
    /// This zone, such as `eu-west-1a`.
    Named(String),
    /// The `AvailabilityZone` of the ECS task metadata endpoint v4 at this URI
    /// (`ECS_CONTAINER_METADATA_URI_V4`), read once at start.
    FromTaskMetadata(String),
}

/// When and where picks prefer the local zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePolicy {
    /// Prefer the local zone at all.
    pub enabled: bool,
    /// Fewest endpoints in the set for zone-aware picking; below it, picks ignore zones.
    pub min_size: usize,
    /// This caller's zone.
    pub local: LocalZone,
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: 6,
            local: LocalZone::Unknown,
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

/// The policy, the local zone once known, and the pick counters; shared by every snapshot.
#[derive(Debug)]
pub struct ZoneRouting {
    enabled: bool,
    min_size: usize,
    local: OnceLock<Arc<str>>,
    picks: [Counter; 2],
}

impl ZoneRouting {
    /// Routing by `policy`; registers `upstream_zone_picks` in `registry`. A named local
    /// zone is set at once; one from task metadata when [`ZoneRouting::learn`] has read it.
    pub fn new(policy: &ZonePolicy, registry: &mut Registry) -> Self {
        let family = Family::<PickLabels, Counter>::default();
        registry.register(
            "upstream_zone_picks",
            "Endpoints picked in this caller's zone and in others, when both zones are known",
            family.clone(),
        );
        let routing = Self {
            enabled: policy.enabled,
            min_size: policy.min_size,
            local: OnceLock::new(),
            picks: [Locality::Local, Locality::Remote]
                .map(|zone| family.get_or_create(&PickLabels { zone }).clone()),
        };
        if let LocalZone::Named(zone) = &policy.local {
            routing.set_local(zone);
        }
        routing
    }

    /// Sets this caller's zone, once.
    pub fn set_local(&self, zone: &str) {
        if self.local.set(Arc::from(zone)).is_ok() {
            tracing::info!(zone, "local zone known");
        }
    }

    /// Reads the local zone from the task metadata at `uri`, when the policy says so.
    pub async fn learn(&self, uri: &str) {
        match from_task_metadata(uri).await {
            Ok(Some(zone)) => self.set_local(&zone),
            Ok(None) => tracing::info!("task metadata names no zone; zone-aware picking off"),
            Err(err) => {
                tracing::warn!(error = %err, "task metadata unavailable; zone-aware picking off")
            }
        }
    }

    /// Among `candidates` (the zones of the endpoints that may be picked now, one entry per
    /// endpoint, `None` for an endpoint of unknown zone) of a set of `set_size`, the zone to
    /// draw from, or `None` to ignore zones.
    pub fn choose<'z, R: Rng + ?Sized>(
        &self,
        set_size: usize,
        candidates: impl Iterator<Item = Option<&'z str>>,
        rng: &mut R,
    ) -> Option<Choice<'z>> {
        let local = self.local.get()?;
        if !self.enabled || set_size < self.min_size {
            return None;
        }
        let mut counts: BTreeMap<&'z str, usize> = BTreeMap::new();
        for zone in candidates {
            *counts.entry(zone?).or_default() += 1;
        }
        let zone = route(local, &counts, rng)?;
        Some(Choice {
            zone,
            local: zone == local.as_ref(),
        })
    }

    /// Counts a pick made under a [`Choice`].
    pub fn count(&self, local: bool) {
        self.picks[usize::from(!local)].inc();
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
/// (endpoints per zone). `None` when no zone can be preferred: the local zone has no
/// candidate, or the candidates are all in one zone.
pub fn route<'z, R: Rng + ?Sized>(
    local: &str,
    counts: &BTreeMap<&'z str, usize>,
    rng: &mut R,
) -> Option<&'z str> {
    let (&local, &local_count) = counts.get_key_value(local)?;
    if counts.len() < 2 {
        return None;
    }
    let total: usize = counts.values().sum();
    let upstream_share = |count: usize| count as f64 / total as f64;
    let caller_share = 1.0 / counts.len() as f64;
    let local_share = upstream_share(local_count);
    if local_share >= caller_share {
        return Some(local);
    }
    if rng.random_range(0.0..1.0) < local_share / caller_share {
        return Some(local);
    }
    // Cross-zone: by residual capacity, the share each zone has beyond its callers' own.
    let residual: Vec<(&'z str, f64)> = counts
        .iter()
        .filter(|(zone, _)| **zone != local)
        .map(|(zone, count)| (*zone, (upstream_share(*count) - caller_share).max(0.0)))
        .collect();
    let sum: f64 = residual.iter().map(|(_, capacity)| capacity).sum();
    if sum <= 0.0 {
        return residual.first().map(|(zone, _)| *zone);
    }
    let mut draw = rng.random_range(0.0..sum);
    for (zone, capacity) in &residual {
        if draw < *capacity {
            return Some(zone);
        }
        draw -= capacity;
    }
    residual.last().map(|(zone, _)| *zone)
}

/// The `AvailabilityZone` of `<uri>/task`.
async fn from_task_metadata(uri: &str) -> Result<Option<String>, reqwest::Error> {
    #[derive(serde::Deserialize)]
    struct Task {
        #[serde(rename = "AvailabilityZone")]
        availability_zone: Option<String>,
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let task: Task = client
        .get(format!("{}/task", uri.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(task.availability_zone.filter(|zone| !zone.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Shares of `rounds` picks by zone.
    fn split(
        local: &str,
        counts: &[(&'static str, usize)],
        rounds: usize,
    ) -> BTreeMap<&'static str, f64> {
        let counts: BTreeMap<&str, usize> = counts.iter().copied().collect();
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
        let counts = BTreeMap::from([("b", 3), ("c", 3)]);
        assert_eq!(route("a", &counts, &mut rng), None);
        let counts = BTreeMap::from([("a", 3)]);
        assert_eq!(route("a", &counts, &mut rng), None);
    }

    #[test]
    fn small_sets_and_unknown_zones_turn_it_off() {
        let mut registry = Registry::default();
        let policy = ZonePolicy {
            local: LocalZone::Named("a".into()),
            ..ZonePolicy::default()
        };
        let routing = ZoneRouting::new(&policy, &mut registry);
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
}
