//! One attempt on one endpoint: the call's request sent on the endpoint's pool with the
//! attempt's trace lines, the answer's status judged by the [`super::StatusPolicy`], the body
//! read up to the bound and decoded where it lies.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::answer::Answer;
use super::caller::Caller;
use super::error::{AttemptError, AttemptErrorKind, DecodeError};
use super::metrics::AttemptOutcome;
use super::request::Request;
use super::trace::SpanId;
use crate::endpoints::Endpoint;
use crate::transport::PoolError;
use crate::transport::http1::{AttemptFields, WireError};

impl Caller {
    /// One attempt of `request`, started at `started` (the caller's clock reading), sent with
    /// trace lines carrying `parent` when the call has a trace: the answer read up to the bound
    /// and decoded. Unbounded in time: the caller races it against its timeout (see
    /// [`super::deadline::bounded`]).
    pub(super) async fn attempt<T, E: Into<DecodeError>>(
        &self,
        endpoint: &Endpoint,
        started: Instant,
        request: &Request,
        parent: Option<SpanId>,
        decode: &impl Fn(Answer<'_>) -> Result<T, E>,
    ) -> Result<T, AttemptError> {
        let _in_flight = endpoint.start();
        let pool = endpoint.pool();
        let sending = {
            // Written out before the first await: the attempt's future does not hold it.
            let trace = request.trace().zip(parent);
            let trace = trace.map(|(context, parent)| context.attempt(parent));
            let lines = trace.as_ref().map(|trace| trace as &dyn AttemptFields);
            let outgoing = request.outgoing(endpoint.fields(request.names_host()));
            pool.send(&outgoing, lines, started)
        };
        let mut exchange = sending
            .await
            .map_err(|err| self.transport_failure(endpoint.addr(), parent, err))?;
        let status = exchange.status();
        if let Some(outcome) = self.answers.failure(status, exchange.retry_after()) {
            // Not read: the connection closes with the answer.
            let kind = AttemptErrorKind::Status(status);
            let mut err = AttemptError::new(endpoint.addr(), outcome, kind);
            err.retry_after = exchange.retry_after();
            err.parent = parent;
            return Err(err);
        }
        exchange
            .read_body(self.max_answer_bytes)
            .await
            .map_err(|err| self.transport_failure(endpoint.addr(), parent, err))?;
        // One clock reading for the endpoint's latency and the connection's idle time.
        let answered = Instant::now();
        let decoded = decode(Answer::new(&exchange));
        // Read to the end: the connection can serve the next request.
        pool.release(exchange, endpoint.in_flight(), answered);
        let answer = decoded.map_err(|err| {
            let kind = AttemptErrorKind::Decode(err.into());
            let mut err = AttemptError::new(endpoint.addr(), AttemptOutcome::BadResponse, kind);
            err.parent = parent;
            err
        })?;
        self.succeeded(endpoint, answered - started, answered);
        Ok(answer)
    }

    /// A failure of the connection or of the wire, with whether the request may have left.
    fn transport_failure(
        &self,
        endpoint: SocketAddr,
        parent: Option<SpanId>,
        err: PoolError,
    ) -> AttemptError {
        let outcome = if matches!(err, PoolError::Wire(WireError::TooLarge(_))) {
            self.metrics.answer_too_large();
            AttemptOutcome::BadResponse
        } else if err.is_connect() {
            AttemptOutcome::ConnectError
        } else {
            AttemptOutcome::BadResponse
        };
        let sent = !err.is_unsent();
        let mut err = AttemptError::new(endpoint, outcome, AttemptErrorKind::Transport(err));
        err.sent = sent;
        err.parent = parent;
        err
    }

    /// Records an attempt that answered after `took`, at `now`.
    fn succeeded(&self, endpoint: &Endpoint, took: std::time::Duration, now: Instant) {
        if endpoint.is_ejected() {
            // Tried because nothing better was left, and it answered: probe it now rather than
            // at the next round, so that it is back in service at once.
            self.set.request_probe();
        }
        endpoint.record_success();
        self.metrics.attempt(AttemptOutcome::Ok);
        self.latency.record(took, now);
    }
}
