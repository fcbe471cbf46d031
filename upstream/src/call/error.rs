//! What a failed call says: [`CallError`] has a kind, a message and the chain of causes;
//! [`AttemptError`] is one attempt's failure, with its outcome for the counters and the retry
//! policy, whether the request may have reached the server, and its cause (the connection's
//! error, the wire's, the decoder's) as its `source`.
//!
//! The chain as one line ([`CallError::chain`]) is bounded in length and escapes control
//! characters, so that whatever a cause carries (a decoder may quote what it read) is never
//! relayed raw.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::metrics::AttemptOutcome;
use super::trace::SpanId;
use crate::lookup::LookupError;
use crate::transport::PoolError;

/// Longest [`CallError::chain`], in bytes, before it is cut short.
const MAX_CHAIN: usize = 1024;

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
    /// The deadline passed before any attempt could start.
    #[error("no attempt to call {name} could start within the {timeout:?} deadline")]
    Deadline {
        /// The service's name.
        name: String,
        /// The call's deadline.
        timeout: Duration,
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
    /// A short machine-readable kind: `dns_failed`, `no_endpoints`, `deadline` (no attempt
    /// could start in time) or `all_attempts_failed`.
    pub fn kind(&self) -> &'static str {
        match &self.0 {
            Failure::DiscoveryFailed { .. } => "dns_failed",
            Failure::NoEndpoints { .. } => "no_endpoints",
            Failure::Deadline { .. } => "deadline",
            Failure::AllAttemptsFailed { .. } => "all_attempts_failed",
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        match &self.0 {
            Failure::DiscoveryFailed { name, .. }
            | Failure::NoEndpoints { name, .. }
            | Failure::Deadline { name, .. }
            | Failure::AllAttemptsFailed { name, .. } => name,
        }
    }

    /// The status of the last attempt's answer, when every attempt failed and the last one
    /// failed on its status (a 5xx, a 429, or a 4xx under
    /// [`StatusPolicy::SuccessOnly`](crate::StatusPolicy::SuccessOnly)). The answer's body was
    /// not read.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.0 {
            Failure::AllAttemptsFailed { last, .. } => match last.kind {
                AttemptErrorKind::Status(status) => Some(status),
                _ => None,
            },
            _ => None,
        }
    }

    /// The error and its causes on one line, `: `-separated; at most about a kilobyte, with
    /// control characters escaped.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// `error` and its causes on one line, `: `-separated, bounded and with control characters
/// escaped.
pub(super) fn chain(error: &dyn StdError) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        for c in cause.to_string().chars() {
            if c.is_control() {
                text.extend(c.escape_default());
            } else {
                text.push(c);
            }
            if text.len() > MAX_CHAIN {
                let mut end = MAX_CHAIN;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("...");
                return text;
            }
        }
        next = cause.source();
    }
    text
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
            Self::NotRetryable => f.write_str(
                "; not retried: the request may have reached the server and is not idempotent",
            ),
            Self::Deadline(timeout) => write!(f, "; the {timeout:?} deadline passed"),
            Self::Budget => f.write_str("; retry budget spent"),
        }
    }
}

/// One attempt's failure, with its cause as its `source`. Boxed: failures are rare, and the
/// call's future, which holds room for one, stays small.
#[derive(Debug)]
pub(crate) struct AttemptError(Box<AttemptFailure>);

/// What an [`AttemptError`] says.
#[derive(Debug)]
pub(crate) struct AttemptFailure {
    pub(super) endpoint: SocketAddr,
    pub(super) kind: AttemptErrorKind,
    pub(super) outcome: AttemptOutcome,
    /// How long the endpoint asked to be left alone (`Retry-After`), when it said.
    pub(super) retry_after: Option<Duration>,
    /// Some of the request may have reached the server: it must not be repeated unless it is
    /// idempotent.
    pub(super) sent: bool,
    /// The parent id the attempt sent, when the call carried a trace context.
    pub(super) parent: Option<SpanId>,
}

impl AttemptError {
    /// A failure of the attempt on `endpoint`, after it may have reached the server.
    pub(super) fn new(
        endpoint: SocketAddr,
        outcome: AttemptOutcome,
        kind: AttemptErrorKind,
    ) -> Self {
        Self(Box::new(AttemptFailure {
            endpoint,
            kind,
            outcome,
            retry_after: None,
            sent: true,
            parent: None,
        }))
    }
}

impl Deref for AttemptError {
    type Target = AttemptFailure;

    fn deref(&self) -> &AttemptFailure {
        &self.0
    }
}

impl DerefMut for AttemptError {
    fn deref_mut(&mut self) -> &mut AttemptFailure {
        &mut self.0
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.kind)
    }
}

impl StdError for AttemptError {
    /// The kind's cause: the kind itself is in this error's message.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.kind.source()
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptErrorKind {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("request failed")]
    Transport(#[source] PoolError),
    #[error("bad answer")]
    Decode(#[source] DecodeError),
}
