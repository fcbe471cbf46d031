//! The hedge: a second attempt on another endpoint, sent when the first has not answered
//! after the hedge delay ([`super::latency`]), paid from the retry budget. Whichever answers
//! first wins; the abandoned attempt is held against its endpoint, so a black-holed instance
//! is ejected after a few calls.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::caller::{Caller, Finished, Progress};
use super::deadline::bounded;
use super::error::{AttemptError, DecodeError};
use super::metrics::AttemptOutcome;
use crate::endpoints::Endpoint;

impl Caller {
    /// Goes on with `attempt` (bounded by its timeout), on `first` and already slower than
    /// the hedge delay: sends a hedge to another endpoint (paid from the retry budget) and goes
    /// on with whichever answers first. The attempt that failed or lost is settled here; the
    /// one returned is the caller's to settle.
    pub(super) async fn hedge<'s, T, E: Into<DecodeError>>(
        &self,
        attempt: impl Future<Output = Result<T, AttemptError>>,
        first: &'s Arc<Endpoint>,
        first_timeout: Duration,
        progress: &mut Progress<'s>,
        decode: &impl Fn(&[u8]) -> Result<T, E>,
    ) -> Finished<'s, T> {
        let done = |result| Finished {
            endpoint: first,
            timeout: first_timeout,
            result,
        };
        let now = Instant::now();
        let mut attempt = pin!(attempt);
        let Some(second) = self.pick(progress, now).filter(|_| self.budget.withdraw()) else {
            return done(attempt.await);
        };
        self.metrics.hedge();
        progress.tried.push(second.addr());
        let second_timeout = self
            .policy
            .attempt_timeout(progress.deadline.saturating_duration_since(now));
        let mut hedge = pin!(bounded(
            self.attempt(second, now, decode),
            tokio::time::sleep(second_timeout),
            second,
            second_timeout,
        ));
        let second_done = |result| Finished {
            endpoint: second,
            timeout: second_timeout,
            result,
        };
        tokio::select! {
            result = attempt.as_mut() => match result {
                Ok(answer) => done(Ok(answer)),
                Err(err) => {
                    self.settle(first, &err, first_timeout);
                    second_done(hedge.await)
                }
            },
            result = &mut hedge => match result {
                Ok(answer) => {
                    self.metrics.hedge_won();
                    // The first attempt is abandoned: slow enough to lose is held against
                    // its endpoint, so a black-holed one is ejected after a few calls.
                    self.metrics.attempt(AttemptOutcome::LostToHedge);
                    self.blame(first, &"lost to a hedge");
                    second_done(Ok(answer))
                }
                Err(err) => {
                    self.settle(second, &err, second_timeout);
                    done(attempt.await)
                }
            },
        }
    }
}
