//! Which answers are the caller's and which are failed attempts, by status: a per-upstream
//! choice ([`StatusPolicy`]), since whether a 4xx says something about the instance depends on
//! what the requests carry.

use std::time::Duration;

use http::StatusCode;

use super::metrics::AttemptOutcome;

/// Which statuses are answers, returned to the caller, and which fail the attempt (retried on
/// another endpoint when the request may be repeated, and counted toward the endpoint's
/// ejection). Whatever the policy: 5xx, and 429, fail the attempt; 429, and 503 with
/// `Retry-After`, as load shedding (the endpoint is left alone for a moment, not ejected).
/// When every attempt fails on its status, the caller gets a [`CallError`](crate::CallError)
/// whose [`status`](crate::CallError::status) is the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusPolicy {
    /// 2xx, 3xx and 4xx other than 429 are answers: requests carry the caller's input, so a
    /// 400 or a 404 is about the request, and another instance would answer the same.
    /// Redirects are not followed.
    #[default]
    ClientErrorsAreAnswers,
    /// Only 2xx is an answer: every other status fails the attempt and counts against the
    /// endpoint. For requests that carry no input of the caller's, where a 404 says the
    /// instance is not what it should be (a task's address reused by another service).
    SuccessOnly,
}

impl StatusPolicy {
    /// The outcome of an attempt answered with `status`, when it failed; `None` for an answer.
    pub(crate) fn failure(
        self,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Option<AttemptOutcome> {
        if status.is_success() {
            None
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
        {
            Some(AttemptOutcome::Overloaded)
        } else if status.is_server_error() {
            Some(AttemptOutcome::ServerError)
        } else if self == Self::ClientErrorsAreAnswers {
            None
        } else if status.is_client_error() {
            Some(AttemptOutcome::ClientError)
        } else {
            Some(AttemptOutcome::BadResponse)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(policy: StatusPolicy, status: u16, retry_after: bool) -> Option<AttemptOutcome> {
        let retry_after = retry_after.then_some(Duration::from_secs(1));
        policy.failure(StatusCode::from_u16(status).unwrap(), retry_after)
    }

    #[test]
    fn client_errors_are_answers_by_default() {
        let policy = StatusPolicy::default();
        for answer in [200, 204, 301, 304, 400, 404, 409, 422] {
            assert_eq!(failure(policy, answer, false), None, "{answer}");
        }
        assert_eq!(
            failure(policy, 429, false),
            Some(AttemptOutcome::Overloaded)
        );
        assert_eq!(failure(policy, 503, true), Some(AttemptOutcome::Overloaded));
        assert_eq!(
            failure(policy, 503, false),
            Some(AttemptOutcome::ServerError)
        );
        assert_eq!(
            failure(policy, 500, false),
            Some(AttemptOutcome::ServerError)
        );
    }

    #[test]
    fn success_only_fails_every_other_status() {
        let policy = StatusPolicy::SuccessOnly;
        assert_eq!(failure(policy, 200, false), None);
        assert_eq!(
            failure(policy, 404, false),
            Some(AttemptOutcome::ClientError)
        );
        assert_eq!(
            failure(policy, 302, false),
            Some(AttemptOutcome::BadResponse)
        );
        assert_eq!(failure(policy, 429, true), Some(AttemptOutcome::Overloaded));
        assert_eq!(
            failure(policy, 502, false),
            Some(AttemptOutcome::ServerError)
        );
    }
}
