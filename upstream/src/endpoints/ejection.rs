//! Outlier ejection's policy and verdicts, after Envoy's outlier detection beside active
//! health checking: `consecutive_5xx` (here any failed attempt that is the endpoint's fault),
//! an ejection whose minimum length doubles on each further ejection, and
//! `max_ejection_percent`, so that a sick network in front of every endpoint cannot eject
//! them all. An ejected endpoint comes back only when a health probe answers, never through a
//! live request; an endpoint whose probe fails while others answer is dead, not an outlier, and
//! is ejected whatever the cap.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectionPolicy {
        EjectionPolicy::default()
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
}
