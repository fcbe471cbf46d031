//! The client `hello`'s handlers hold: one call to the `name` service, made of attempts.
//! Each attempt goes to an endpoint the picker chooses, with its own timeout inside the
//! request's deadline. An attempt that fails because of the endpoint (connect error, timeout,
//! 5xx, a broken connection or answer) counts against it and is retried on another endpoint
//! while attempts, deadline and retry budget last; GET is idempotent, so a retry is safe. A
//! 4xx is `name` refusing the request itself: no other instance would answer differently, so
//! it is neither retried nor held against the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::CallOptions;
use crate::endpoints::{Discovery, Endpoint, EndpointSet};
use crate::metrics::{AttemptOutcome, Metrics};
use crate::picker;
use crate::retry::RetryBudget;

/// The `name` service's JSON answer.
#[derive(Debug, Clone, Deserialize)]
pub struct NameAnswer {
    /// The first name.
    pub name: String,
    /// The `name` instance that chose it.
    pub instance: String,
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// What `name` answered.
    pub answer: NameAnswer,
    /// The endpoint that answered.
    pub endpoint: SocketAddr,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// Why a call found no name.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// There is no endpoint to call, and DNS is failing.
    #[error("no endpoints for {name}: {reason}")]
    DnsFailed {
        /// The service's DNS name.
        name: String,
        /// The lookup's failure.
        reason: String,
    },
    /// There is no endpoint to call: DNS answered with none, or has not answered yet.
    #[error("no endpoints for {name}: {reason}")]
    NoEndpoints {
        /// The service's DNS name.
        name: String,
        /// Why the set is empty.
        reason: String,
    },
    /// Every attempt failed.
    #[error("no instance of {name} answered ({attempts} attempts); last: {last}")]
    AllAttemptsFailed {
        /// The service's DNS name.
        name: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
}

impl CallError {
    /// A short machine-readable kind, for JSON bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DnsFailed { .. } => "dns_failed",
            Self::NoEndpoints { .. } => "no_endpoints",
            Self::AllAttemptsFailed { .. } => "all_attempts_failed",
        }
    }

    /// The DNS name involved.
    pub fn name(&self) -> &str {
        match self {
            Self::DnsFailed { name, .. }
            | Self::NoEndpoints { name, .. }
            | Self::AllAttemptsFailed { name, .. } => name,
        }
    }
}

/// One attempt's failure.
#[derive(Debug)]
struct AttemptError {
    outcome: AttemptOutcome,
    detail: String,
}

impl AttemptError {
    /// True when the failure says something about the endpoint, so it counts toward ejection
    /// and another endpoint may do better.
    fn is_endpoint_failure(&self) -> bool {
        self.outcome != AttemptOutcome::ClientError
    }
}

/// Calls the `name` service across its endpoints.
pub struct NameClient {
    name: String,
    endpoints: Arc<EndpointSet>,
    options: CallOptions,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
    wake_refresher: Arc<Notify>,
}

impl NameClient {
    /// A client for the service `name` (as shown in messages) over `endpoints`.
    pub fn new(
        name: String,
        endpoints: Arc<EndpointSet>,
        options: CallOptions,
        metrics: Arc<Metrics>,
        wake_refresher: Arc<Notify>,
    ) -> Self {
        let budget = RetryBudget::new(
            options.retry_budget_percent,
            options.retry_budget_min_per_second,
        );
        Self {
            name,
            endpoints,
            options,
            budget,
            metrics,
            wake_refresher,
        }
    }

    /// The endpoint set this client calls.
    pub fn endpoints(&self) -> &EndpointSet {
        &self.endpoints
    }

    /// The service's name, as shown in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gets a name: attempts until one succeeds or attempts, deadline or budget run out.
    pub async fn call(&self) -> Result<Reply, CallError> {
        let deadline = Instant::now() + self.options.request_timeout;
        self.budget.deposit();
        let snapshot = self.endpoints.snapshot();
        if snapshot.endpoints.is_empty() {
            return Err(self.no_endpoints(&snapshot.discovery));
        }

        let mut tried = Vec::new();
        // Why the last attempt failed, and why no further attempt was made; built only when
        // an attempt fails.
        let mut last = String::new();
        for attempt in 1..=self.options.max_attempts {
            let now = Instant::now();
            if now >= deadline {
                let timeout = self.options.request_timeout;
                last = format!("{last}; then the {timeout:?} deadline passed");
                break;
            }
            // `rand::rng()` is a temporary, gone before the next await: the future stays `Send`.
            let Some(endpoint) = picker::pick(&snapshot.endpoints, &tried, now, &mut rand::rng())
            else {
                break;
            };
            if attempt > 1 {
                if !self.budget.withdraw() {
                    self.metrics.retry_refused();
                    last = format!("{last}; retry budget spent");
                    break;
                }
                self.metrics.retry();
            }
            tried.push(endpoint.addr());
            let timeout = self.options.attempt_timeout.min(deadline - now);
            let err = match self.attempt(endpoint, timeout).await {
                Ok(answer) => {
                    endpoint.record_success();
                    self.metrics.attempt(AttemptOutcome::Ok);
                    return Ok(Reply {
                        answer,
                        endpoint: endpoint.addr(),
                        attempts: attempt,
                    });
                }
                Err(err) => err,
            };
            self.metrics.attempt(err.outcome);
            tracing::debug!(endpoint = %endpoint.addr(), attempt, error = %err.detail, "attempt failed");
            last = format!("{}: {}", endpoint.addr(), err.detail);
            if !err.is_endpoint_failure() {
                return Err(self.all_failed(tried.len(), last));
            }
            // A timeout cut short by the request's own deadline says nothing about the endpoint.
            let cut_short = timeout < self.options.attempt_timeout;
            if !(err.outcome == AttemptOutcome::Timeout && cut_short)
                && let Some(ejected_for) = self.endpoints.record_failure(endpoint, Instant::now())
            {
                self.metrics.ejection();
                tracing::warn!(endpoint = %endpoint.addr(), ?ejected_for, error = %err.detail, "endpoint ejected");
            }
        }
        // Nothing answered: the instances may have moved, so ask DNS again without waiting for
        // the TTL (the refresher still keeps to its floor).
        self.wake_refresher.notify_one();
        Err(self.all_failed(tried.len(), last))
    }

    fn all_failed(&self, attempts: usize, last: String) -> CallError {
        CallError::AllAttemptsFailed {
            name: self.name.clone(),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last,
        }
    }

    fn no_endpoints(&self, discovery: &Discovery) -> CallError {
        let name = self.name.clone();
        match discovery {
            Discovery::Failing { reason } => CallError::DnsFailed {
                name,
                reason: reason.clone(),
            },
            Discovery::Pending => CallError::NoEndpoints {
                name,
                reason: "DNS has not answered yet".into(),
            },
            Discovery::NoRecords { reason } => CallError::NoEndpoints {
                name,
                reason: format!("DNS answered: {reason}"),
            },
            Discovery::Fixed | Discovery::Resolved => CallError::NoEndpoints {
                name,
                reason: "DNS answered with no instances".into(),
            },
        }
    }

    async fn attempt(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<NameAnswer, AttemptError> {
        let _in_flight = endpoint.start();
        let request = async {
            let response = endpoint
                .pool()
                .get(endpoint.url())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(classify)?;
            let status = response.status();
            if !status.is_success() {
                let outcome = if status.is_client_error() {
                    AttemptOutcome::ClientError
                } else if status.is_server_error() {
                    AttemptOutcome::ServerError
                } else {
                    AttemptOutcome::BadResponse
                };
                return Err(AttemptError {
                    outcome,
                    detail: format!("status {status}"),
                });
            }
            response
                .json::<NameAnswer>()
                .await
                .map_err(|err| AttemptError {
                    outcome: AttemptOutcome::BadResponse,
                    detail: format!("bad answer: {err}"),
                })
        };
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or_else(|_| {
                Err(AttemptError {
                    outcome: AttemptOutcome::Timeout,
                    detail: format!("no answer within {timeout:?}"),
                })
            })
    }
}

fn classify(err: reqwest::Error) -> AttemptError {
    let outcome = if err.is_connect() {
        AttemptOutcome::ConnectError
    } else if err.is_timeout() {
        AttemptOutcome::Timeout
    } else {
        AttemptOutcome::BadResponse
    };
    // reqwest's top-level message is generic; the cause chain says what happened.
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail = format!("{detail}: {cause}");
        source = cause.source();
    }
    AttemptError { outcome, detail }
}
