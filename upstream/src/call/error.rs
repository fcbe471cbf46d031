//! What a failed call says: [`CallError`] has a kind, a message and the chain of causes;
//! [`AttemptError`] is one attempt's failure, with its outcome for the counters and the retry
//! policy.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::metrics::AttemptOutcome;
use crate::lookup::LookupError;

/// A decoder's error.
pub type DecodeError = Box<dyn StdError + Send + Sync>;

/// Why a call got no answer: [`CallError::kind`] says which class of failure, its `Display`
/// says why in words, and its `source` chain keeps the causes.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CallError(pub(super) Failure);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// There is no endpoint to call, and discovery is failing.
    #[error("no endpoints for {name}")]
    DiscoveryFailed {
        /// The service's name.
        name: String,
        /// The lookup's failure.
        #[source]
        source: Arc<LookupError>,
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
    Answered(Arc<LookupError>),
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
    /// The last attempt may have reached the server, and the request is not safe to repeat.
    NotRetryable,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted => Ok(()),
            Self::NotRetryable => f.write_str("; not retried: the request is not idempotent"),
            Self::Deadline(timeout) => write!(f, "; the {timeout:?} deadline passed"),
            Self::Budget => f.write_str("; retry budget spent"),
        }
    }
}

/// One attempt's failure, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {kind}")]
pub(crate) struct AttemptError {
    pub(super) endpoint: SocketAddr,
    pub(super) kind: AttemptErrorKind,
    pub(super) outcome: AttemptOutcome,
    /// How long the endpoint asked to be left alone (`Retry-After`), when it said.
    pub(super) retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptErrorKind {
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
