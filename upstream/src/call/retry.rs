//! The retry policy, all of it in one place: how many attempts, each attempt's timeout inside
//! the request's deadline, which failed attempts are retried, which count against the
//! endpoint and which cool it down, and the retry budget (hedges draw from it too) that keeps a failing upstream from receiving a multiple of
//! the load.
//!
//! The budget is tower's `TpsBudget` (Finagle's `RetryBudget`; linkerd's retry budgets): over
//! a sliding ten-second window, retries may add `budget_percent` of the requests plus
//! `budget_min_per_second`. When every instance fails, the upstream then sees about
//! `1 + percent` times the load instead of `max_attempts` times.

use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

use super::metrics::AttemptOutcome;

/// The window the budget counts over.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Bound on `budget_min_per_second` (tower's budget takes less than `i32::MAX`; more than
/// this many retries a second is no budget at all).
const MAX_MIN_PER_SECOND: u32 = 1_000_000;

/// How a call is attempted and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included; each retry goes to another endpoint.
    pub max_attempts: u32,
    /// Time allowed for one attempt, connection included.
    pub attempt_timeout: Duration,
    /// Time allowed for the whole call, all attempts included.
    pub request_timeout: Duration,
    /// Retries allowed as a share of calls over the last ten seconds, in percent (0 to 1000).
    pub budget_percent: u32,
    /// Retries allowed per second whatever the call rate, so that low traffic can retry.
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            budget_percent: 20,
            budget_min_per_second: 10,
        }
    }
}

/// The longest an overloaded endpoint is left alone, whatever its `Retry-After` says.
const MAX_COOL_DOWN: Duration = Duration::from_secs(10);

/// How long an overloaded endpoint is left alone when it does not say.
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);

/// What a failed attempt means for the call and for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Another endpoint may do better: try one, if attempts, deadline and budget allow.
    pub retry: bool,
    /// The failure says something about this endpoint: count it toward ejection.
    pub blame: bool,
    /// The endpoint is overloaded: prefer others for this long, without ejecting it.
    pub cool_down: Option<Duration>,
}

impl RetryPolicy {
    /// Checks the fields' ranges; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=10).contains(&self.max_attempts) {
            return Err(("retry.max_attempts", "must be 1 to 10".into()));
        }
        if self.budget_percent > 1000 {
            return Err(("retry.budget_percent", "must be at most 1000".into()));
        }
        if self.budget_min_per_second > MAX_MIN_PER_SECOND {
            return Err((
                "retry.budget_min_per_second",
                format!("must be at most {MAX_MIN_PER_SECOND}"),
            ));
        }
        Ok(())
    }

    /// The timeout of an attempt started with `left` until the call's deadline.
    pub(crate) fn attempt_timeout(&self, left: Duration) -> Duration {
        self.attempt_timeout.min(left)
    }

    /// What an attempt that ended in `outcome` under `timeout` means. The call to the
    /// upstream carries no input of the caller's, so every failure says something about the
    /// instance and another may do better: a 404-class answer comes from an instance serving
    /// something else (a task's reused address), and counts against it; 429, or 503 with
    /// `Retry-After`, is an instance shedding load: left alone for a moment, not ejected. A
    /// timeout cut short by the call's own deadline says nothing about the endpoint.
    pub(crate) fn verdict(
        &self,
        outcome: AttemptOutcome,
        timeout: Duration,
        retry_after: Option<Duration>,
    ) -> Verdict {
        let (retry, blame, cool_down) = match outcome {
            AttemptOutcome::Ok => (false, false, None),
            AttemptOutcome::Overloaded => {
                let cool_down = retry_after.unwrap_or(DEFAULT_COOL_DOWN).min(MAX_COOL_DOWN);
                (true, false, Some(cool_down))
            }
            AttemptOutcome::Timeout if timeout < self.attempt_timeout => (true, false, None),
            AttemptOutcome::ConnectError
            | AttemptOutcome::Timeout
            | AttemptOutcome::ServerError
            | AttemptOutcome::ClientError
            | AttemptOutcome::BadResponse
            | AttemptOutcome::LostToHedge => (true, true, None),
        };
        Verdict {
            retry,
            blame,
            cool_down,
        }
    }

    /// A fresh budget for this policy.
    pub(crate) fn budget(&self) -> RetryBudget {
        RetryBudget(TpsBudget::new(
            BUDGET_WINDOW,
            self.budget_min_per_second.min(MAX_MIN_PER_SECOND),
            self.budget_percent.min(1000) as f32 / 100.0,
        ))
    }
}

/// Counts calls and retries and says whether a retry fits. Lock-free on the request path.
#[derive(Debug)]
pub(crate) struct RetryBudget(TpsBudget);

impl RetryBudget {
    /// Counts a call.
    pub(crate) fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min_per_second: u32) -> RetryPolicy {
        RetryPolicy {
            budget_percent: percent,
            budget_min_per_second: min_per_second,
            ..RetryPolicy::default()
        }
    }

    fn spend(budget: &RetryBudget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(()))
            .take(10_000)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_by_share_of_requests_plus_a_floor() {
        let budget = policy(20, 1).budget();
        for _ in 0..100 {
            budget.deposit();
        }
        // 1 per second over 10 s, plus 20% of 100 requests.
        assert_eq!(spend(&budget), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let budget = policy(0, 2).budget();
        assert_eq!(spend(&budget), 20);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!budget.withdraw(), "retries of the last 10 s still count");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(spend(&budget) > 0, "the window slid past the spent retries");
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_means_no_retries() {
        let budget = policy(0, 0).budget();
        budget.deposit();
        assert!(!budget.withdraw());
    }

    #[test]
    fn a_client_error_is_retried_and_blamed() {
        let verdict =
            RetryPolicy::default().verdict(AttemptOutcome::ClientError, Duration::MAX, None);
        assert!(verdict.retry && verdict.blame && verdict.cool_down.is_none());
    }

    #[test]
    fn overload_is_retried_and_cooled_down_without_blame() {
        let policy = RetryPolicy::default();
        let said = policy.verdict(
            AttemptOutcome::Overloaded,
            Duration::MAX,
            Some(Duration::from_secs(3)),
        );
        assert!(said.retry && !said.blame);
        assert_eq!(said.cool_down, Some(Duration::from_secs(3)));
        let unsaid = policy.verdict(AttemptOutcome::Overloaded, Duration::MAX, None);
        assert_eq!(unsaid.cool_down, Some(DEFAULT_COOL_DOWN));
        let huge = policy.verdict(
            AttemptOutcome::Overloaded,
            Duration::MAX,
            Some(Duration::from_secs(3600)),
        );
        assert_eq!(huge.cool_down, Some(MAX_COOL_DOWN));
    }

    #[test]
    fn a_timeout_cut_short_by_the_deadline_is_retried_without_blame() {
        let policy = RetryPolicy::default();
        let short = policy.verdict(AttemptOutcome::Timeout, Duration::from_millis(10), None);
        assert!(short.retry && !short.blame);
        let full = policy.verdict(AttemptOutcome::Timeout, policy.attempt_timeout, None);
        assert!(full.retry && full.blame);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let policy = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.validate().unwrap_err().0, "retry.max_attempts");
    }

    #[test]
    fn the_budgets_bounds_are_inclusive() {
        let refused = |percent, min_per_second| policy(percent, min_per_second).validate().err();
        assert_eq!(refused(1000, MAX_MIN_PER_SECOND), None);
        assert_eq!(refused(1001, 0).unwrap().0, "retry.budget_percent");
        assert_eq!(
            refused(0, MAX_MIN_PER_SECOND + 1).unwrap().0,
            "retry.budget_min_per_second"
        );
    }
}
