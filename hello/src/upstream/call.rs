//! One call to the upstream, made of attempts. Each attempt goes to an endpoint the picker
//! chooses, with its own timeout inside the call's deadline; what a failed attempt means
//! (retry elsewhere? count against the endpoint?) is the [`RetryPolicy`]'s to say. The answer
//! is read up to a bound and handed to the caller's decoder; an answer that does not decode is
//! a failed attempt like any other.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::pin;

use http::StatusCode;
use tokio::time::Instant;

use super::Shared;
use super::endpoints::{Cause, Discovery, Endpoint, Recorded, Snapshot};
use super::http1::WireError;
use super::metrics::AttemptOutcome;
use super::picker;
use super::pool::PoolError;
use super::retry::{RetryBudget, RetryPolicy};

/// The most endpoints one call tries; `RetryPolicy::max_attempts` is at most this.
const MAX_TRIED: usize = 10;

/// A decoder's error.
pub(crate) type DecodeError = Box<dyn StdError + Send + Sync>;

/// A successful call.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The decoded answer.
    pub answer: T,
    /// The endpoint that answered.
    pub endpoint: SocketAddr,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// Why a call got no answer: [`CallError::kind`] says which class of failure, its `Display`
/// says why in words, and its `source` chain keeps the causes.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CallError(Failure);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// There is no endpoint to call, and discovery is failing.
    #[error("no endpoints for {name}")]
    DiscoveryFailed {
        /// The service's name.
        name: String,
        /// The lookup's failure.
        #[source]
        source: Arc<super::dns::LookupError>,
    },
    /// There is no endpoint to call: discovery answered with none, or has not answered yet.
    #[error("no endpoints for {name}: {reason}")]
    NoEndpoints {
        /// The service's name.
        name: String,
        /// Why the set is empty.
        reason: NoEndpoints,
    },
    /// Every attempt failed.
    #[error("every attempt to call {name} failed ({attempts} attempts{stopped})")]
    AllAttemptsFailed {
        /// The service's name.
        name: String,
        /// Attempts made.
        attempts: u32,
        /// Why no further attempt was made, when it was not the number of attempts.
        stopped: Stopped,
        /// The last attempt's failure.
        #[source]
        last: AttemptError,
    },
}

impl CallError {
    /// A short machine-readable kind: `dns_failed`, `no_endpoints` or `all_attempts_failed`.
    pub fn kind(&self) -> &'static str {
        match &self.0 {
            Failure::DiscoveryFailed { .. } => "dns_failed",
            Failure::NoEndpoints { .. } => "no_endpoints",
            Failure::AllAttemptsFailed { .. } => "all_attempts_failed",
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        match &self.0 {
            Failure::DiscoveryFailed { name, .. }
            | Failure::NoEndpoints { name, .. }
            | Failure::AllAttemptsFailed { name, .. } => name,
        }
    }

    /// The error and its causes on one line, `: `-separated.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// Why the endpoint set is empty.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum NoEndpoints {
    /// Discovery has not answered yet.
    #[error("DNS has not answered yet")]
    Pending,
    /// Discovery answered that there are no instances.
    #[error("DNS answered: {0}")]
    Answered(Arc<super::dns::LookupError>),
    /// Discovery answered with an empty set.
    #[error("DNS answered with no instances")]
    Empty,
}

/// Why a call stopped before its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// It made every attempt it could.
    Exhausted,
    /// The call's deadline passed.
    Deadline(Duration),
    /// The retry budget was spent.
    Budget,
    /// The last failure is not one another endpoint would answer differently.
    NotRetryable,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted | Self::NotRetryable => Ok(()),
            Self::Deadline(timeout) => write!(f, "; the {timeout:?} deadline passed"),
            Self::Budget => f.write_str("; retry budget spent"),
        }
    }
}

/// One attempt's failure, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {kind}")]
pub(crate) struct AttemptError {
    endpoint: SocketAddr,
    kind: AttemptErrorKind,
    outcome: AttemptOutcome,
    /// How long the endpoint asked to be left alone (`Retry-After`), when it said.
    retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
enum AttemptErrorKind {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad answer")]
    Decode(#[source] DecodeError),
    #[error("request failed")]
    Http(#[source] Box<dyn StdError + Send + Sync>),
}

/// Calls the upstream across its endpoints.
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: RetryPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) max_answer_bytes: usize,
}

/// The endpoints a call has tried, in order; no allocation.
struct Tried {
    addrs: [SocketAddr; MAX_TRIED],
    len: usize,
}

impl Tried {
    fn new() -> Self {
        Self {
            addrs: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIED],
            len: 0,
        }
    }

    fn push(&mut self, addr: SocketAddr) {
        if self.len < MAX_TRIED {
            self.addrs[self.len] = addr;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..self.len]
    }
}

/// The attempt a call goes on with: its endpoint, its timeout and how it ended.
struct Finished<'s, T> {
    endpoint: &'s Arc<Endpoint>,
    timeout: Duration,
    result: Result<T, AttemptError>,
}

impl Caller {
    /// Calls until an attempt succeeds or attempts, deadline or budget run out.
    pub(crate) async fn call<T, E>(
        &self,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<Reply<T>, CallError>
    where
        E: Into<DecodeError>,
    {
        let started = Instant::now();
        let deadline = started + self.policy.request_timeout;
        self.budget.deposit();
        let snapshot = self.shared.endpoints.snapshot();
        if snapshot.endpoints.is_empty() {
            return Err(self.no_endpoints(&snapshot.discovery));
        }

        let max_attempts = (self.policy.max_attempts as usize).min(MAX_TRIED);
        let mut tried = Tried::new();
        let mut last = None;
        let mut stopped = Stopped::Exhausted;
        while tried.len < max_attempts {
            let now = if tried.len == 0 {
                started
            } else {
                Instant::now()
            };
            if now >= deadline {
                stopped = Stopped::Deadline(self.policy.request_timeout);
                break;
            }
            // `rand::rng()` is a temporary, gone before the next await: the future stays `Send`.
            let Some(endpoint) =
                picker::pick(&snapshot.endpoints, tried.as_slice(), now, &mut rand::rng())
            else {
                break;
            };
            if tried.len > 0 {
                if !self.budget.withdraw() {
                    self.shared.metrics.retry_refused();
                    stopped = Stopped::Budget;
                    break;
                }
                self.shared.metrics.retry();
            }
            tried.push(endpoint.addr());
            let timeout = self.policy.attempt_timeout(deadline - now);
            let mut attempt = pin!(self.attempt(endpoint, now, &decode));
            let hedge_after = self
                .shared
                .latency
                .hedge_delay()
                .filter(|delay| tried.len < max_attempts && *delay < timeout);
            // One timer per attempt: it fires at the hedge point when hedging, and is moved to
            // the attempt's timeout only if it does.
            let mut timer = pin!(tokio::time::sleep_until(
                now + hedge_after.unwrap_or(timeout)
            ));
            let first = tokio::select! {
                biased;
                result = attempt.as_mut() => Some(result),
                () = timer.as_mut() => None,
            };
            let finished = match (first, hedge_after) {
                (Some(result), _) => Finished {
                    endpoint,
                    timeout,
                    result,
                },
                (None, None) => Finished {
                    endpoint,
                    timeout,
                    result: Err(timed_out(endpoint, timeout)),
                },
                // Slow to answer: race a hedge. Its future is boxed, so that the common path's
                // future, moved on every request, stays small.
                (None, Some(_)) => {
                    timer.as_mut().reset(now + timeout);
                    let bounded = bounded(attempt, timer, endpoint, timeout);
                    Box::pin(self.hedge(
                        bounded, endpoint, timeout, &snapshot, &mut tried, deadline, &decode,
                    ))
                    .await
                }
            };
            match finished.result {
                Ok(answer) => {
                    return Ok(Reply {
                        answer,
                        endpoint: finished.endpoint.addr(),
                        attempts: tried.len as u32,
                    });
                }
                Err(err) => {
                    let retry = self.settle(finished.endpoint, &err, finished.timeout);
                    last = Some(err);
                    if !retry {
                        stopped = Stopped::NotRetryable;
                        break;
                    }
                }
            }
        }
        // Nothing answered: the instances may have moved, so look again without waiting for
        // the TTL (the refresher still keeps to its floor).
        self.shared.request_refresh();
        let name = self.name.clone();
        let attempts = tried.len as u32;
        Err(CallError(match last {
            Some(last) => Failure::AllAttemptsFailed {
                name,
                attempts,
                stopped,
                last,
            },
            // No attempt at all: the deadline passed at once.
            None => Failure::NoEndpoints {
                name,
                reason: NoEndpoints::Empty,
            },
        }))
    }

    /// Goes on with `attempt` (bounded by its timeout), on `first` and already slower than
    /// the hedge delay: sends a hedge to another endpoint (paid from the retry budget) and goes
    /// on with whichever answers first. The attempt that failed or lost is settled here; the
    /// one returned is the caller's to settle.
    #[allow(clippy::too_many_arguments)]
    async fn hedge<'s, T, E: Into<DecodeError>>(
        &self,
        attempt: impl Future<Output = Result<T, AttemptError>>,
        first: &'s Arc<Endpoint>,
        first_timeout: Duration,
        snapshot: &'s Snapshot,
        tried: &mut Tried,
        deadline: Instant,
        decode: &impl Fn(&[u8]) -> Result<T, E>,
    ) -> Finished<'s, T> {
        let done = |result| Finished {
            endpoint: first,
            timeout: first_timeout,
            result,
        };
        let now = Instant::now();
        let hedge_to = picker::pick(&snapshot.endpoints, tried.as_slice(), now, &mut rand::rng());
        let mut attempt = pin!(attempt);
        let Some(second) = hedge_to.filter(|_| self.budget.withdraw()) else {
            return done(attempt.await);
        };
        self.shared.metrics.hedge();
        tried.push(second.addr());
        let second_timeout = self
            .policy
            .attempt_timeout(deadline.saturating_duration_since(now));
        let mut hedge = pin!(bounded(
            self.attempt(second, now, decode),
            tokio::time::sleep(second_timeout),
            second,
            second_timeout,
        ));
        tokio::select! {
            result = attempt.as_mut() => match result {
                Ok(answer) => done(Ok(answer)),
                Err(err) => {
                    self.settle(first, &err, first_timeout);
                    Finished { endpoint: second, timeout: second_timeout, result: hedge.await }
                }
            },
            result = &mut hedge => match result {
                Ok(answer) => {
                    self.shared.metrics.hedge_won();
                    // The first attempt is abandoned: slow enough to lose is held against
                    // its endpoint, so a black-holed one is ejected after a few calls.
                    self.shared.metrics.attempt(AttemptOutcome::LostToHedge);
                    self.blame(first, &"lost to a hedge");
                    Finished { endpoint: second, timeout: second_timeout, result: Ok(answer) }
                }
                Err(err) => {
                    self.settle(second, &err, second_timeout);
                    done(attempt.await)
                }
            },
        }
    }

    /// Applies a failed attempt's verdict to its endpoint and the counters; returns whether
    /// another endpoint may do better.
    fn settle(&self, endpoint: &Endpoint, err: &AttemptError, timeout: Duration) -> bool {
        self.shared.metrics.attempt(err.outcome);
        tracing::debug!(endpoint = %endpoint.addr(), error = %err, "attempt failed");
        let verdict = self.policy.verdict(err.outcome, timeout, err.retry_after);
        if let Some(cool_down) = verdict.cool_down {
            endpoint.cool_down(Instant::now() + cool_down);
        }
        if verdict.blame {
            self.blame(endpoint, err);
        }
        verdict.retry
    }

    /// Counts a failure against `endpoint`: it may be ejected, or probed when the ejection cap
    /// keeps it in.
    fn blame(&self, endpoint: &Endpoint, why: &dyn fmt::Display) {
        match self
            .shared
            .endpoints
            .record_failure(endpoint, Instant::now())
        {
            Recorded::Counted => {}
            Recorded::Ejected(at_least) => {
                self.shared.metrics.ejection();
                tracing::warn!(endpoint = %endpoint.addr(), ?at_least, error = %why, "endpoint ejected");
            }
            Recorded::Suspect => self.shared.request_probe(),
        }
    }

    fn no_endpoints(&self, discovery: &Discovery) -> CallError {
        let name = self.name.clone();
        CallError(match discovery {
            Discovery::Failing {
                reason: Cause(source),
            } => Failure::DiscoveryFailed {
                name,
                source: Arc::clone(source),
            },
            Discovery::Pending => Failure::NoEndpoints {
                name,
                reason: NoEndpoints::Pending,
            },
            Discovery::NoRecords {
                reason: Cause(answer),
            } => Failure::NoEndpoints {
                name,
                reason: NoEndpoints::Answered(Arc::clone(answer)),
            },
            Discovery::Fixed | Discovery::Resolved => Failure::NoEndpoints {
                name,
                reason: NoEndpoints::Empty,
            },
        })
    }

    /// One attempt, started at `started` (the caller's clock reading): `GET /` on the
    /// endpoint, the answer read up to the bound and decoded. Unbounded in time: the caller
    /// races it against its timeout (see [`Caller::bounded`]).
    async fn attempt<T, E: Into<DecodeError>>(
        &self,
        endpoint: &Endpoint,
        started: Instant,
        decode: &impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<T, AttemptError> {
        let _in_flight = endpoint.start();
        let fail = |outcome, kind| AttemptError {
            endpoint: endpoint.addr(),
            kind,
            outcome,
            retry_after: None,
        };
        let request = async {
            let pool = endpoint.pool();
            let answer = pool
                .send(endpoint.call_head(), Some(self.max_answer_bytes), started)
                .await
                .map_err(|err| match err {
                    PoolError::Wire(WireError::TooLarge(limit)) => {
                        self.shared.metrics.answer_too_large();
                        fail(
                            AttemptOutcome::BadResponse,
                            AttemptErrorKind::TooLarge(limit),
                        )
                    }
                    err => {
                        let outcome = if err.is_connect() {
                            AttemptOutcome::ConnectError
                        } else {
                            AttemptOutcome::BadResponse
                        };
                        fail(outcome, AttemptErrorKind::Http(err.into()))
                    }
                })?;
            let status = answer.status();
            if !status.is_success() {
                let retry_after = answer.retry_after();
                return Err(AttemptError {
                    retry_after,
                    ..fail(
                        status_outcome(status, retry_after),
                        AttemptErrorKind::Status(status),
                    )
                });
            }
            // One clock reading for the endpoint's latency and the connection's idle time.
            let answered = Instant::now();
            let decoded = decode(answer.body());
            // Read to the end: the connection can serve the next request.
            pool.release(answer, endpoint.in_flight(), answered);
            decoded.map(|answer| (answer, answered)).map_err(|err| {
                fail(
                    AttemptOutcome::BadResponse,
                    AttemptErrorKind::Decode(err.into()),
                )
            })
        };
        let (answer, answered) = request.await?;
        if endpoint.is_ejected() {
            // Tried because nothing better was left, and it answered: probe it now rather than
            // at the next round, so that it is back in service at once.
            self.shared.request_probe();
        }
        endpoint.record_success();
        self.shared.metrics.attempt(AttemptOutcome::Ok);
        self.shared.latency.record(answered - started, answered);
        Ok(answer)
    }
}

/// `attempt`, failed as timed out if `timer` (set to `timeout`) fires first.
async fn bounded<T>(
    attempt: impl Future<Output = Result<T, AttemptError>>,
    timer: impl Future<Output = ()>,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<T, AttemptError> {
    tokio::select! {
        biased;
        result = attempt => result,
        () = timer => Err(timed_out(endpoint, timeout)),
    }
}

/// An attempt on `endpoint` that did not answer within `timeout`.
fn timed_out(endpoint: &Endpoint, timeout: Duration) -> AttemptError {
    AttemptError {
        endpoint: endpoint.addr(),
        kind: AttemptErrorKind::Timeout(timeout),
        outcome: AttemptOutcome::Timeout,
        retry_after: None,
    }
}

/// What a status other than 2xx says: 429, or 503 with `Retry-After`, is load shedding; other
/// 4xx and 5xx are the endpoint's failures.
fn status_outcome(status: StatusCode, retry_after: Option<Duration>) -> AttemptOutcome {
    if status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
    {
        AttemptOutcome::Overloaded
    } else if status.is_client_error() {
        AttemptOutcome::ClientError
    } else if status.is_server_error() {
        AttemptOutcome::ServerError
    } else {
        AttemptOutcome::BadResponse
    }
}
