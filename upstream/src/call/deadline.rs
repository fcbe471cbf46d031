//! An attempt's timeout: an attempt that has not answered when its timer fires has failed.

use std::future::Future;
use std::time::Duration;

use super::error::{AttemptError, AttemptErrorKind};
use super::metrics::AttemptOutcome;
use crate::endpoints::Endpoint;

/// `attempt`, failed as timed out if `timer` (set to `timeout`) fires first.
pub(super) async fn bounded<T>(
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
pub(super) fn timed_out(endpoint: &Endpoint, timeout: Duration) -> AttemptError {
    AttemptError {
        endpoint: endpoint.addr(),
        kind: AttemptErrorKind::Timeout(timeout),
        outcome: AttemptOutcome::Timeout,
        retry_after: None,
    }
}
