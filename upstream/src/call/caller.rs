//! One call to the upstream, made of attempts. Each attempt goes to an endpoint the picker
//! chooses, with its own timeout inside the call's deadline; what a failed attempt means
//! (retry elsewhere? count against the endpoint?) is the [`RetryPolicy`]'s to say. The answer
//! is read up to a bound and handed to the caller's decoder; an answer that does not decode is
//! a failed attempt like any other.

use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::deadline::{bounded, timed_out};
use super::error::{AttemptError, CallError, DecodeError, Failure, NoEndpoints, Stopped};
use super::latency::{HedgePolicy, Latency};
use super::metrics::CallMetrics;
use super::retry::{RetryBudget, RetryPolicy};
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
    /// Attempts made, the successful one included.
    pub attempts: u32,
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
    pub(super) max_answer_bytes: usize,
}

/// What the calls need besides the endpoint set.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Attempts, timeouts and the retry budget.
    pub retry: RetryPolicy,
    /// When a second attempt races a slow first one.
    pub hedge: HedgePolicy,
    /// Most bytes read from one answer.
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

/// One call's progress: the snapshot it picks from, the endpoints tried, its deadline.
pub(super) struct Progress<'s> {
    pub(super) snapshot: &'s Snapshot,
    pub(super) tried: Tried,
    pub(super) deadline: Instant,
    pub(super) max_attempts: usize,
}

/// The attempt a call goes on with: its endpoint, its timeout and how it ended.
pub(super) struct Finished<'s, T> {
    pub(super) endpoint: &'s Arc<Endpoint>,
    pub(super) timeout: Duration,
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
            max_answer_bytes: options.max_answer_bytes,
        }
    }

    /// The service's name, as shown in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls until an attempt succeeds or attempts, deadline or budget run out.
    pub async fn call<T, E>(
        &self,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<Reply<T>, CallError>
    where
        E: Into<DecodeError>,
    {
        let started = Instant::now();
        self.budget.deposit();
        let snapshot = self.set.snapshot();
        if snapshot.endpoints.is_empty() {
            return Err(self.no_endpoints(&snapshot.discovery));
        }
        let mut progress = Progress {
            snapshot: &snapshot,
            tried: Tried::new(),
            deadline: started + self.policy.request_timeout,
            max_attempts: (self.policy.max_attempts as usize).min(MAX_TRIED),
        };
        let mut last = None;
        let mut stopped = Stopped::Exhausted;
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
            let finished = self
                .attempt_or_hedge(endpoint, now, &mut progress, &decode)
                .await;
            match finished.result {
                Ok(answer) => {
                    return Ok(Reply {
                        answer,
                        endpoint: finished.endpoint.addr(),
                        attempts: progress.tried.len() as u32,
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
        Err(self.exhausted(progress.tried.len() as u32, last, stopped))
    }

    /// The endpoint for the next attempt at `now`, counted as tried; `Ok(None)` when every
    /// endpoint has been tried, `Err` when the deadline or the budget stops the call.
    fn next_endpoint<'s>(
        &self,
        progress: &mut Progress<'s>,
        now: Instant,
    ) -> Result<Option<&'s Arc<Endpoint>>, Stopped> {
        if now >= progress.deadline {
            return Err(Stopped::Deadline(self.policy.request_timeout));
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
    /// than the hedge delay, raced by a hedge on another endpoint.
    async fn attempt_or_hedge<'s, T, E: Into<DecodeError>>(
        &self,
        endpoint: &'s Arc<Endpoint>,
        now: Instant,
        progress: &mut Progress<'s>,
        decode: &impl Fn(&[u8]) -> Result<T, E>,
    ) -> Finished<'s, T> {
        let timeout = self
            .policy
            .attempt_timeout(progress.deadline.saturating_duration_since(now));
        let mut attempt = pin!(self.attempt(endpoint, now, decode));
        let hedge_after = self
            .latency
            .hedge_delay()
            .filter(|delay| progress.tried.len() < progress.max_attempts && *delay < timeout);
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
        let done = |result| Finished {
            endpoint,
            timeout,
            result,
        };
        match (first, hedge_after) {
            (Some(result), _) => done(result),
            (None, None) => done(Err(timed_out(endpoint, timeout))),
            // Slow to answer: race a hedge. Its future is boxed, so that the common path's
            // future, moved on every request, stays small.
            (None, Some(_)) => {
                timer.as_mut().reset(now + timeout);
                let bounded = bounded(attempt, timer, endpoint, timeout);
                Box::pin(self.hedge(bounded, endpoint, timeout, progress, decode)).await
            }
        }
    }

    /// Applies a failed attempt's verdict to its endpoint and the counters; returns whether
    /// another endpoint may do better.
    pub(super) fn settle(
        &self,
        endpoint: &Endpoint,
        err: &AttemptError,
        timeout: Duration,
    ) -> bool {
        self.metrics.attempt(err.outcome);
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
    fn exhausted(&self, attempts: u32, last: Option<AttemptError>, stopped: Stopped) -> CallError {
        self.set.request_refresh();
        let name = self.name.clone();
        CallError(match last {
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
