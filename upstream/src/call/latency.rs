//! Hedging: when an attempt has not answered after a delay derived from recent latency (the
//! p95 of the last second's successful attempts, within a floor and a cap), a second attempt
//! goes to another endpoint and the first answer wins. The hedge is paid for from the retry
//! budget, so a slow upstream is not sent twice the load. This bounds the tail when an
//! instance black-holes packets: a call waits about the hedge delay plus one healthy round
//! trip, not a whole attempt timeout.
//!
//! The latency record is a histogram of power-of-two microsecond buckets in atomics,
//! rotated each second; recording is two atomic operations on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets: `[2^i, 2^(i+1))` microseconds, the last one open-ended (above 1 s).
const BUCKETS: usize = 21;

/// Successful attempts a window needs before its p95 is believed.
const MIN_SAMPLES: u32 = 20;

/// When a second attempt races a slow first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgePolicy {
    /// Hedge at all.
    pub enabled: bool,
    /// Shortest delay before a hedge, whatever the latency says.
    pub min_delay: Duration,
    /// Longest delay before a hedge; also the delay while latency is not yet known.
    pub max_delay: Duration,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(250),
        }
    }
}

/// Recent latency of successful attempts, and the hedge delay it gives.
#[derive(Debug)]
pub(crate) struct Latency {
    policy: HedgePolicy,
    epoch: Instant,
    /// The second (since `epoch`) the buckets count.
    window: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
    /// The current hedge delay, in microseconds.
    delay_micros: AtomicU64,
}

impl Latency {
    pub(crate) fn new(policy: HedgePolicy) -> Self {
        Self {
            policy,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            delay_micros: AtomicU64::new(micros(policy.max_delay)),
        }
    }

    /// The delay before a hedge, or `None` when hedging is off.
    pub(crate) fn hedge_delay(&self) -> Option<Duration> {
        self.policy
            .enabled
            .then(|| Duration::from_micros(self.delay_micros.load(Ordering::Relaxed)))
    }

    /// Records a successful attempt that took `took`, finished at `now`.
    pub(crate) fn record(&self, took: Duration, now: Instant) {
        if !self.policy.enabled {
            return;
        }
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let window = self.window.load(Ordering::Relaxed);
        if second != window
            && self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.rotate();
        }
        let bucket = (u64::BITS - micros(took).leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Turns the finished window into the next hedge delay and starts a new one. Samples
    /// recorded by other threads during the swap land in either window; for a p95 that is
    /// good enough.
    fn rotate(&self) {
        let counts: [u32; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].swap(0, Ordering::Relaxed));
        let total: u32 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return;
        }
        let mut seen = 0;
        let p95 = counts
            .iter()
            .position(|count| {
                seen += count;
                u64::from(seen) * 100 >= u64::from(total) * 95
            })
            .unwrap_or(BUCKETS - 1);
        // The bucket's upper edge: a delay most answers beat.
        let upper = Duration::from_micros(1u64 << p95.min(40));
        let delay = upper.clamp(self.policy.min_delay, self.policy.max_delay);
        self.delay_micros.store(micros(delay), Ordering::Relaxed);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HedgePolicy {
        HedgePolicy {
            enabled: true,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(500),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_the_cap_until_latency_is_known() {
        let latency = Latency::new(policy());
        assert_eq!(latency.hedge_delay(), Some(Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_follows_the_p95_of_the_last_second() {
        let latency = Latency::new(policy());
        let now = Instant::now();
        for _ in 0..95 {
            latency.record(Duration::from_micros(3_000), now);
        }
        for _ in 0..5 {
            latency.record(Duration::from_millis(200), now);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        latency.record(Duration::from_micros(3_000), Instant::now());
        // 3 ms falls in [2048, 4096) µs: the delay is that bucket's upper edge.
        assert_eq!(latency.hedge_delay(), Some(Duration::from_micros(4096)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_keeps_to_its_floor() {
        let latency = Latency::new(HedgePolicy {
            min_delay: Duration::from_millis(10),
            ..policy()
        });
        let now = Instant::now();
        for _ in 0..100 {
            latency.record(Duration::from_micros(300), now);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        latency.record(Duration::from_micros(300), Instant::now());
        assert_eq!(latency.hedge_delay(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn off_means_no_hedge() {
        let latency = Latency::new(HedgePolicy {
            enabled: false,
            ..policy()
        });
        assert_eq!(latency.hedge_delay(), None);
    }
}
