//! One call to the upstream, made of attempts. Each attempt goes to an endpoint the picker
//! chooses, with its own timeout inside the call's deadline; what a failed attempt means
//! (retry elsewhere? count against the endpoint?) is the [`RetryPolicy`]'s to say, and whether
//! the request may be sent again is the request's ([`Request::is_replayable`]): a request that
//! may have reached a server is repeated only when it is idempotent. The answer is read up to
//! a bound and handed to the caller's decoder; an answer that does not decode is a failed
//! attempt like any other.
//!
//! The first call after start waits for discovery's first answer, within its deadline.

use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::answer::Answer;
use super::deadline::{bounded, timed_out};
use super::error::{AttemptError, CallError, DecodeError, Failure, NoEndpoints, Stopped, chain};
use super::latency::{HedgePolicy, Latency};
use super::metrics::CallMetrics;
use super::request::Request;
use super::retry::{RetryBudget, RetryPolicy};
use super::status::StatusPolicy;
use super::trace::SpanId;
use crate::endpoints::{Cause, Discovery, Endpoint, EndpointSet, Recorded, Snapshot};
use crate::select::{ZoneRouting, pick};

/// The most endpoints one call tries; `RetryPolicy::max_attempts` is at most this.
const MAX_TRIED: usize = 10;

/// A successful call.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The decoded answer.
    pub answer: T,
    /// The endpoint that answered.
    pub endpoint: SocketAddr,
    /// Attempts made, the successful one included (a hedge is an attempt).
    pub attempts: u32,
    /// The parent id the answering attempt sent in `traceparent`, when the call carried a
    /// [`TraceContext`](crate::TraceContext): the span to look for in the upstream's logs.
    pub parent_id: Option<SpanId>,
}

impl<T> Reply<T> {
    /// The reply of the attempt that answered `answer`, after `progress`'s attempts.
    fn new(answer: T, attempt: Launched<'_>, progress: &Progress<'_>) -> Self {
        Self {
            answer,
            endpoint: attempt.endpoint.addr(),
            attempts: progress.tried.len() as u32,
            parent_id: attempt.parent,
        }
    }
}

/// Calls the upstream across its endpoints.
pub struct Caller {
    name: String,
    pub(super) set: Arc<EndpointSet>,
    zones: Option<Arc<ZoneRouting>>,
    pub(super) policy: RetryPolicy,
    pub(super) budget: RetryBudget,
    pub(super) latency: Latency,
    pub(super) metrics: CallMetrics,
    pub(super) answers: StatusPolicy,
    pub(super) max_answer_bytes: usize,
}

/// What the calls need besides the endpoint set.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Attempts, timeouts and the retry budget.
    pub retry: RetryPolicy,
    /// When a second attempt races a slow first one.
    pub hedge: HedgePolicy,
    /// Which statuses are answers.
    pub answers: StatusPolicy,
    /// Most bytes read from one answer's body.
    pub max_answer_bytes: usize,
}

/// The endpoints a call has tried, in order; no allocation.
pub(super) struct Tried {
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

    pub(super) fn push(&mut self, addr: SocketAddr) {
        if self.len < MAX_TRIED {
            self.addrs[self.len] = addr;
            self.len += 1;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..self.len]
    }
}

/// One call's progress: its request, the snapshot it picks from, the endpoints tried, its
/// deadline.
pub(super) struct Progress<'s> {
    pub(super) request: &'s Request,
    pub(super) snapshot: &'s Snapshot,
    pub(super) tried: Tried,
    pub(super) deadline: Instant,
    pub(super) max_attempts: usize,
}

/// An attempt under way: its endpoint, its timeout and the parent id it sent.
#[derive(Clone, Copy)]
pub(super) struct Launched<'s> {
    pub(super) endpoint: &'s Arc<Endpoint>,
    pub(super) timeout: Duration,
    pub(super) parent: Option<SpanId>,
}

impl<'s> Launched<'s> {
    /// The attempt, ended with `result`.
    pub(super) fn finish<T>(self, result: Result<T, AttemptError>) -> Finished<'s, T> {
        Finished {
            attempt: self,
            result,
        }
    }
}

/// The attempt a call goes on with, and how it ended.
pub(super) struct Finished<'s, T> {
    pub(super) attempt: Launched<'s>,
    pub(super) result: Result<T, AttemptError>,
}

impl Caller {
    /// A caller of `name`'s endpoints in `set`, picking by zone when `zones` says; registers
    /// the calls' counters in `registry`.
    pub fn new(
        name: String,
        set: Arc<EndpointSet>,
        zones: Option<Arc<ZoneRouting>>,
        options: CallOptions,
        registry: &mut Registry,
    ) -> Self {
        Self {
            name,
            set,
            zones,
            budget: options.retry.budget(),
            policy: options.retry,
            latency: Latency::new(options.hedge),
            metrics: CallMetrics::register(registry),
            answers: options.answers,
            max_answer_bytes: options.max_answer_bytes,
        }
    }

    /// The service's name, as shown in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls with `request` until an attempt succeeds or attempts, deadline or budget run
    /// out, or the last failure may not be repeated; each answer goes to `decode`. One
    /// function, so that the call's future holds its state once.
    pub async fn call<T, E>(
        &self,
        request: &Request,
        decode: impl Fn(Answer<'_>) -> Result<T, E>,
    ) -> Result<Reply<T>, CallError>
    where
        E: Into<DecodeError>,
    {
        let started = Instant::now();
        self.budget.deposit();
        let deadline = self.deadline(request, started);
        let (snapshot, started) = self.endpoints_by(started, deadline).await?;
        let mut progress = Progress {
            request,
            snapshot: &snapshot,
            tried: Tried::new(),
            deadline,
            max_attempts: (self.policy.max_attempts as usize).min(MAX_TRIED),
        };
        let (mut last, mut stopped) = (None, Stopped::Exhausted);
        while progress.tried.len() < progress.max_attempts {
            let now = if progress.tried.len() == 0 {
                started
            } else {
                Instant::now()
            };
            let endpoint = match self.next_endpoint(&mut progress, now) {
                Ok(Some(endpoint)) => endpoint,
                Ok(None) => break,
                Err(stop) => {
                    stopped = stop;
                    break;
                }
            };
            let Finished { attempt, result } = self
                .attempt_or_hedge(endpoint, now, &mut progress, &decode)
                .await;
            let err = match result {
                Ok(answer) => return Ok(Reply::new(answer, attempt, &progress)),
                Err(err) => err,
            };
            let retry = self.settle(attempt.endpoint, &err, attempt.timeout, request);
            last = Some(err);
            if !retry {
                stopped = Stopped::NotRetryable;
                break;
            }
        }
        Err(self.exhausted(&progress, last, stopped))
    }

    /// The call's timeout: its own, or the policy's.
    fn timeout(&self, request: &Request) -> Duration {
        request.timeout().unwrap_or(self.policy.request_timeout)
    }

    /// The deadline of a call of `request` started at `started`.
    fn deadline(&self, request: &Request, started: Instant) -> Instant {
        // A deadline beyond what the clock can hold is no deadline: a year is as good.
        started
            .checked_add(self.timeout(request))
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600))
    }

    /// The endpoints to call, and the clock reading attempts start from: at once when some are
    /// known; when discovery has not answered yet (the service has just started), after its
    /// first answer, if it comes before `deadline`.
    async fn endpoints_by(
        &self,
        started: Instant,
        deadline: Instant,
    ) -> Result<(Arc<Snapshot>, Instant), CallError> {
        let snapshot = self.set.snapshot();
        if !snapshot.endpoints.is_empty() {
            return Ok((snapshot, started));
        }
        if snapshot.discovery != Discovery::Pending {
            return Err(self.no_endpoints(&snapshot.discovery));
        }
        let _ = tokio::time::timeout_at(deadline, self.set.discovered()).await;
        let snapshot = self.set.snapshot();
        if snapshot.endpoints.is_empty() {
            return Err(self.no_endpoints(&snapshot.discovery));
        }
        Ok((snapshot, Instant::now()))
    }

    /// The endpoint for the next attempt at `now`, counted as tried; `Ok(None)` when every
    /// endpoint has been tried, `Err` when the deadline or the budget stops the call.
    fn next_endpoint<'s>(
        &self,
        progress: &mut Progress<'s>,
        now: Instant,
    ) -> Result<Option<&'s Arc<Endpoint>>, Stopped> {
        if now >= progress.deadline {
            return Err(Stopped::Deadline(self.timeout(progress.request)));
        }
        // `rand::rng()` is a temporary, gone before the next await: the future stays `Send`.
        let Some(endpoint) = self.pick(progress, now) else {
            return Ok(None);
        };
        if progress.tried.len() > 0 {
            if !self.budget.withdraw() {
                self.metrics.retry_refused();
                return Err(Stopped::Budget);
            }
            self.metrics.retry();
        }
        progress.tried.push(endpoint.addr());
        Ok(Some(endpoint))
    }

    /// Picks an endpoint not yet tried by this call.
    pub(super) fn pick<'s>(
        &self,
        progress: &Progress<'s>,
        now: Instant,
    ) -> Option<&'s Arc<Endpoint>> {
        pick(
            &progress.snapshot.endpoints,
            self.zones.as_deref(),
            progress.tried.as_slice(),
            now,
            &mut rand::rng(),
        )
    }

    /// One attempt on `endpoint`, started at `now`, bounded by its timeout; when it is slower
    /// than the hedge delay and the request may be sent twice, raced by a hedge on another
    /// endpoint.
    async fn attempt_or_hedge<'s, T, E: Into<DecodeError>>(
        &self,
        endpoint: &'s Arc<Endpoint>,
        now: Instant,
        progress: &mut Progress<'s>,
        decode: &impl Fn(Answer<'_>) -> Result<T, E>,
    ) -> Finished<'s, T> {
        let timeout = self
            .policy
            .attempt_timeout(progress.deadline.saturating_duration_since(now));
        let request = progress.request;
        let parent = request.trace().map(|_| SpanId::fresh());
        let mut attempt = pin!(self.attempt(endpoint, now, request, parent, decode));
        let hedge_after = self.latency.hedge_delay().filter(|delay| {
            request.is_replayable()
                && progress.tried.len() < progress.max_attempts
                && *delay < timeout
        });
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
        let launched = Launched {
            endpoint,
            timeout,
            parent,
        };
        match (first, hedge_after) {
            (Some(result), _) => launched.finish(result),
            (None, None) => launched.finish(Err(timed_out(endpoint, timeout, parent))),
            // Slow to answer: race a hedge. Its future is boxed, so that the common path's
            // future, moved on every request, stays small.
            (None, Some(_)) => {
                timer.as_mut().reset(now + timeout);
                let bounded = bounded(attempt, timer, endpoint, timeout, parent);
                Box::pin(self.hedge(bounded, launched, progress, decode)).await
            }
        }
    }

    /// Applies a failed attempt's verdict to its endpoint and the counters; returns whether
    /// another endpoint may do better and `request` may be sent again after this failure.
    pub(super) fn settle(
        &self,
        endpoint: &Endpoint,
        err: &AttemptError,
        timeout: Duration,
        request: &Request,
    ) -> bool {
        self.metrics.attempt(err.outcome);
        tracing::debug!(endpoint = %endpoint.addr(), parent_id = err.parent.map(tracing::field::display), error = %chain(err), "attempt failed");
        let verdict = self.policy.verdict(err.outcome, timeout, err.retry_after);
        if let Some(cool_down) = verdict.cool_down {
            endpoint.cool_down(Instant::now() + cool_down);
        }
        if verdict.blame {
            self.blame(endpoint, err);
        }
        verdict.retry && (request.is_replayable() || !err.sent)
    }

    /// Counts a failure against `endpoint`: it may be ejected, or probed when the ejection cap
    /// keeps it in.
    pub(super) fn blame(&self, endpoint: &Endpoint, why: &dyn fmt::Display) {
        match self.set.record_failure(endpoint, Instant::now()) {
            Recorded::Counted => {}
            Recorded::Ejected(at_least) => {
                tracing::warn!(endpoint = %endpoint.addr(), ?at_least, error = %why, "endpoint ejected");
            }
            Recorded::Suspect => self.set.request_probe(),
        }
    }

    /// The error of a call whose attempts ran out: nothing answered, so the instances may
    /// have moved; the refresher is asked to look again without waiting for the TTL (it still
    /// keeps to its floor).
    fn exhausted(
        &self,
        progress: &Progress<'_>,
        last: Option<AttemptError>,
        stopped: Stopped,
    ) -> CallError {
        self.set.request_refresh();
        let name = self.name.clone();
        CallError(match last {
            Some(last) => Failure::AllAttemptsFailed {
                name,
                attempts: progress.tried.len() as u32,
                stopped,
                last,
            },
            // No attempt at all: with endpoints known, only the deadline stops the first.
            None => Failure::Deadline {
                name,
                timeout: self.timeout(progress.request),
            },
        })
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
}
