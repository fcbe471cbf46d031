//! An attempt's timeout: an attempt that has not answered when its timer fires has failed.

use std::future::Future;
use std::time::Duration;

use super::error::{AttemptError, AttemptErrorKind};
use super::metrics::AttemptOutcome;
use super::trace::SpanId;
use crate::endpoints::Endpoint;

/// `attempt`, failed as timed out if `timer` (set to `timeout`) fires first.
pub(super) async fn bounded<T>(
    attempt: impl Future<Output = Result<T, AttemptError>>,
    timer: impl Future<Output = ()>,
    endpoint: &Endpoint,
    timeout: Duration,
    parent: Option<SpanId>,
) -> Result<T, AttemptError> {
    tokio::select! {
        biased;
        result = attempt => result,
        () = timer => Err(timed_out(endpoint, timeout, parent)),
    }
}

/// An attempt on `endpoint` that did not answer within `timeout`; it may have been sent.
pub(super) fn timed_out(
    endpoint: &Endpoint,
    timeout: Duration,
    parent: Option<SpanId>,
) -> AttemptError {
    let mut err = AttemptError::new(
        endpoint.addr(),
        AttemptOutcome::Timeout,
        AttemptErrorKind::Timeout(timeout),
    );
    err.parent = parent;
    err
}
