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

use tokio::time::Instant;

use super::Shared;
use super::endpoints::{Cause, Discovery, Endpoint};
use super::metrics::AttemptOutcome;
use super::picker;
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
}

#[derive(Debug, thiserror::Error)]
enum AttemptErrorKind {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad answer")]
    Decode(#[source] DecodeError),
    #[error("request failed")]
    Http(#[source] reqwest::Error),
}

/// Calls the upstream across its endpoints.
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: RetryPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) max_answer_bytes: usize,
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
        let deadline = Instant::now() + self.policy.request_timeout;
        self.budget.deposit();
        let snapshot = self.shared.endpoints.snapshot();
        if snapshot.endpoints.is_empty() {
            return Err(self.no_endpoints(&snapshot.discovery));
        }

        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIED];
        let mut attempts = 0;
        let mut last = None;
        let mut stopped = Stopped::Exhausted;
        while attempts < (self.policy.max_attempts as usize).min(MAX_TRIED) {
            let now = Instant::now();
            if now >= deadline {
                stopped = Stopped::Deadline(self.policy.request_timeout);
                break;
            }
            // `rand::rng()` is a temporary, gone before the next await: the future stays `Send`.
            let Some(endpoint) = picker::pick(
                &snapshot.endpoints,
                &tried[..attempts],
                now,
                &mut rand::rng(),
            ) else {
                break;
            };
            if attempts > 0 {
                if !self.budget.withdraw() {
                    self.shared.metrics.retry_refused();
                    stopped = Stopped::Budget;
                    break;
                }
                self.shared.metrics.retry();
            }
            tried[attempts] = endpoint.addr();
            attempts += 1;
            let timeout = self.policy.attempt_timeout(deadline - now);
            let err = match self.attempt(endpoint, timeout, &decode).await {
                Ok(answer) => {
                    endpoint.record_success();
                    self.shared.metrics.attempt(AttemptOutcome::Ok);
                    return Ok(Reply {
                        answer,
                        endpoint: endpoint.addr(),
                        attempts: attempts as u32,
                    });
                }
                Err(err) => err,
            };
            self.shared.metrics.attempt(err.outcome);
            tracing::debug!(endpoint = %endpoint.addr(), attempts, error = %err, "attempt failed");
            let verdict = self.policy.verdict(err.outcome, timeout);
            if verdict.blame
                && let Some(ejected_for) = self
                    .shared
                    .endpoints
                    .record_failure(endpoint, Instant::now())
            {
                self.shared.metrics.ejection();
                tracing::warn!(endpoint = %endpoint.addr(), ?ejected_for, error = %err, "endpoint ejected");
            }
            last = Some(err);
            if !verdict.retry {
                stopped = Stopped::NotRetryable;
                break;
            }
        }
        if stopped != Stopped::NotRetryable {
            // Nothing answered: the instances may have moved, so look again without waiting
            // for the TTL (the refresher still keeps to its floor).
            self.shared.request_refresh();
        }
        let name = self.name.clone();
        let attempts = attempts as u32;
        Err(CallError(match last {
            Some(last) => Failure::AllAttemptsFailed {
                name,
                attempts,
                stopped,
                last,
            },
            // No attempt at all: every endpoint was tried already (cannot happen on the first
            // pass) or the deadline passed at once.
            None => Failure::NoEndpoints {
                name,
                reason: NoEndpoints::Empty,
            },
        }))
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

    async fn attempt<T, E: Into<DecodeError>>(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
        decode: &impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<T, AttemptError> {
        let _in_flight = endpoint.start();
        let fail = |outcome, kind| AttemptError {
            endpoint: endpoint.addr(),
            kind,
            outcome,
        };
        let request = async {
            let mut response = endpoint
                .pool()
                .get(endpoint.url())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|err| fail(classify(&err), AttemptErrorKind::Http(err)))?;
            let status = response.status();
            if !status.is_success() {
                let outcome = if status.is_client_error() {
                    AttemptOutcome::ClientError
                } else if status.is_server_error() {
                    AttemptOutcome::ServerError
                } else {
                    AttemptOutcome::BadResponse
                };
                return Err(fail(outcome, AttemptErrorKind::Status(status)));
            }
            let limit = self.max_answer_bytes;
            let too_large = || {
                fail(
                    AttemptOutcome::BadResponse,
                    AttemptErrorKind::TooLarge(limit),
                )
            };
            if response
                .content_length()
                .is_some_and(|length| length > limit as u64)
            {
                return Err(too_large());
            }
            // Read no more than the bound, whatever the instance sends: an endless body costs
            // `limit` bytes, not memory until the kernel steps in.
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|err| fail(AttemptOutcome::BadResponse, AttemptErrorKind::Http(err)))?
            {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            decode(&body).map_err(|err| {
                fail(
                    AttemptOutcome::BadResponse,
                    AttemptErrorKind::Decode(err.into()),
                )
            })
        };
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or_else(|_| {
                Err(fail(
                    AttemptOutcome::Timeout,
                    AttemptErrorKind::Timeout(timeout),
                ))
            })
    }
}

fn classify(err: &reqwest::Error) -> AttemptOutcome {
    if err.is_connect() {
        AttemptOutcome::ConnectError
    } else if err.is_timeout() {
        AttemptOutcome::Timeout
    } else {
        AttemptOutcome::BadResponse
    }
}
