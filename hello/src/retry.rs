//! The retry budget: retries may add at most a share of the request rate, plus a small
//! allowance per second, over a sliding window of ten seconds (Finagle's `RetryBudget`,
//! linkerd's retry budgets). When every `name` instance fails, `hello` then sends about
//! `1 + percent` times its load to them instead of `max_attempts` times.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window the budget counts over, in one-second slots.
const WINDOW_SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

/// Counts requests and retries over a sliding window and says whether a retry fits.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of the slot `slots[head]` counts.
    head_start: Instant,
    head: usize,
    /// Per slot: (requests, retries).
    slots: [(u64, u64); WINDOW_SLOTS],
}

impl Window {
    /// Moves the window forward to `now`, clearing the slots that fell out of it.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = (elapsed.as_millis() / SLOT.as_millis()) as usize;
        for _ in 0..steps.min(WINDOW_SLOTS) {
            self.head = (self.head + 1) % WINDOW_SLOTS;
            self.slots[self.head] = (0, 0);
        }
        self.head_start += SLOT * steps as u32;
    }

    fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(requests, retries), slot| {
            (requests + slot.0, retries + slot.1)
        })
    }
}

impl RetryBudget {
    /// A budget of `percent` of requests plus `min_per_second` retries each second.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: percent.into(),
            min_per_second: min_per_second.into(),
            window: Mutex::new(Window {
                head_start: Instant::now(),
                head: 0,
                slots: [(0, 0); WINDOW_SLOTS],
            }),
        }
    }

    /// Counts a request.
    pub fn deposit(&self) {
        let mut window = self.window();
        window.advance(Instant::now());
        let head = window.head;
        window.slots[head].0 += 1;
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut window = self.window();
        window.advance(Instant::now());
        let (requests, retries) = window.totals();
        let allowed = self.min_per_second * WINDOW_SLOTS as u64 + requests * self.percent / 100;
        if retries >= allowed {
            return false;
        }
        let head = window.head;
        window.slots[head].1 += 1;
        true
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counters only, consistent after every write: a poisoned lock still holds good data.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(budget: &RetryBudget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(()))
            .take(10_000)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_by_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(20, 1);
        for _ in 0..100 {
            budget.deposit();
        }
        // 1 per second over 10 s, plus 20% of 100 requests.
        assert_eq!(spend(&budget), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let budget = RetryBudget::new(0, 2);
        assert_eq!(spend(&budget), 20);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!budget.withdraw(), "retries of the last 10 s still count");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(spend(&budget), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_means_no_retries() {
        let budget = RetryBudget::new(0, 0);
        budget.deposit();
        assert!(!budget.withdraw());
    }
}
