//! The hedge: a second attempt on another endpoint, sent when the first has not answered
//! after the hedge delay ([`super::latency`]), paid from the retry budget, and only for a
//! request that may be sent twice ([`super::Request::is_replayable`]). Whichever answers first
//! wins; the abandoned attempt is held against its endpoint, so a black-holed instance is
//! ejected after a few calls. The hedge carries a parent id of its own.

use std::future::Future;
use std::pin::pin;

use tokio::time::Instant;

use super::answer::Answer;
use super::caller::{Caller, Finished, Launched, Progress};
use super::deadline::bounded;
use super::error::{AttemptError, DecodeError};
use super::metrics::AttemptOutcome;
use super::trace::SpanId;

impl Caller {
    /// Goes on with `attempt` (bounded by its timeout), the attempt `first` and already slower
    /// than the hedge delay: sends a hedge to another endpoint (paid from the retry budget) and
    /// goes on with whichever answers first. The attempt that failed or lost is settled here;
    /// the one returned is the caller's to settle.
    pub(super) async fn hedge<'s, T, E: Into<DecodeError>>(
        &self,
        attempt: impl Future<Output = Result<T, AttemptError>>,
        first: Launched<'s>,
        progress: &mut Progress<'s>,
        decode: &impl Fn(Answer<'_>) -> Result<T, E>,
    ) -> Finished<'s, T> {
        let now = Instant::now();
        let mut attempt = pin!(attempt);
        let Some(endpoint) = self.pick(progress, now).filter(|_| self.budget.withdraw()) else {
            return first.finish(attempt.await);
        };
        self.metrics.hedge();
        progress.tried.push(endpoint.addr());
        let request = progress.request;
        let parent = request.trace().map(|_| SpanId::fresh());
        let second = Launched {
            endpoint,
            timeout: self
                .policy
                .attempt_timeout(progress.deadline.saturating_duration_since(now)),
            parent,
        };
        let mut hedge = pin!(bounded(
            self.attempt(endpoint, now, request, parent, decode),
            tokio::time::sleep(second.timeout),
            endpoint,
            second.timeout,
            second.parent,
        ));
        tokio::select! {
            result = attempt.as_mut() => match result {
                Ok(answer) => first.finish(Ok(answer)),
                Err(err) => {
                    self.settle(first.endpoint, &err, first.timeout, request);
                    second.finish(hedge.await)
                }
            },
            result = &mut hedge => match result {
                Ok(answer) => {
                    self.metrics.hedge_won();
                    // The first attempt is abandoned: slow enough to lose is held against
                    // its endpoint, so a black-holed one is ejected after a few calls.
                    self.metrics.attempt(AttemptOutcome::LostToHedge);
                    self.blame(first.endpoint, &"lost to a hedge");
                    second.finish(Ok(answer))
                }
                Err(err) => {
                    self.settle(second.endpoint, &err, second.timeout, request);
                    first.finish(attempt.await)
                }
            },
        }
    }
}
