//! One full answer of a discovery source, and the bounds on how long an answer is kept.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One complete answer: every instance the source returned, and how long the answer is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The instances, each an address and port.
    pub addrs: BTreeSet<SocketAddr>,
    /// The smallest TTL of the records that made the answer.
    pub ttl: Duration,
    /// The availability zone of the instances that have one (Cloud Map's API says; DNS does
    /// not).
    pub zones: HashMap<SocketAddr, Arc<str>>,
}

/// Floor and ceiling on how long an answer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    /// Floor: no two lookups closer together than this.
    pub min: Duration,
    /// Ceiling: no answer kept longer than this.
    pub max: Duration,
}

impl TtlBounds {
    /// When to ask again after an answer with `ttl`.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min, self.max)
    }

    /// When to ask again after `failures` failed lookups in a row: the floor, doubled for each
    /// further failure, up to the ceiling.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TtlBounds = TtlBounds {
        min: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    #[test]
    fn a_zero_ttl_waits_for_the_floor() {
        assert_eq!(BOUNDS.clamp(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn a_long_ttl_is_cut_to_the_ceiling() {
        assert_eq!(
            BOUNDS.clamp(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_ttl_within_bounds_is_kept() {
        assert_eq!(
            BOUNDS.clamp(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn failures_back_off_up_to_the_ceiling() {
        let delays: Vec<u64> = (1..=7).map(|n| BOUNDS.backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
