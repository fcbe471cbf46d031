//! One attempt on one endpoint: the request sent on the endpoint's pool, the answer read up to
//! the bound and decoded, and what its status says when it is not a success.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::caller::Caller;
use super::error::{AttemptError, AttemptErrorKind, DecodeError};
use super::metrics::AttemptOutcome;
use crate::endpoints::Endpoint;
use crate::transport::PoolError;
use crate::transport::http1::WireError;

impl Caller {
    /// One attempt, started at `started` (the caller's clock reading): `GET /` on the
    /// endpoint, the answer read up to the bound and decoded. Unbounded in time: the caller
    /// races it against its timeout (see [`Caller::bounded`]).
    pub(super) async fn attempt<T, E: Into<DecodeError>>(
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
                        self.metrics.answer_too_large();
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
            self.set.request_probe();
        }
        endpoint.record_success();
        self.metrics.attempt(AttemptOutcome::Ok);
        self.latency.record(answered - started, answered);
        Ok(answer)
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
