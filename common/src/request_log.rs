//! The request layer [`crate::serve`] puts around a service's router: it reads the request's
//! trace context ([`crate::trace`]) and keeps it for the request's task, so that every log line
//! written while serving the request carries its `trace_id` (see [`crate::telemetry`]);
//! answers with a `traceresponse` header; counts the request for the EMF metrics
//! ([`crate::emf::RequestStats`]); and writes one access-log line per request:
//!
//! ```text
//! {"timestamp":..,"level":"INFO","message":"request","method":"GET","path":"/","status":200,
//!  "duration_ms":1.234,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",
//!  "amzn_trace_id":"1-5759e988-bd862e3fe1be46a994272793","endpoint":"10.0.1.7:3000",
//!  "attempts":1,"target":"common::request_log"}
//! ```
//!
//! `amzn_trace_id` is there when the request carried a valid ALB root; `endpoint`, `attempts`
//! and `error` when the handler noted them ([`note_upstream`], [`note_error`]). The duration
//! runs from the request's head to its answer's head. The context lives in a Tokio task-local
//! for the request's future (no tracing span, no allocation), so work spawned onto other tasks
//! does not carry it.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{Method, Request, Response, StatusCode, Uri};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::emf::RequestStats;
use crate::trace::{Ascii, TRACERESPONSE, TraceContext, TraceId};

/// Which requests get an access-log line (`ACCESS_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccessLog {
    /// Every request, health checks included.
    #[default]
    All,
    /// Requests answered with a 5xx status: the service's failures. A 4xx is the client's
    /// (a scanner's random paths on a public load balancer would fill the log), and the
    /// `Requests4xx` metric counts them.
    Errors,
    /// None.
    Off,
}

impl AccessLog {
    fn logs(self, status: StatusCode) -> bool {
        match self {
            Self::All => true,
            Self::Errors => status.is_server_error(),
            Self::Off => false,
        }
    }
}

/// Paths not counted in the request metrics: probes and scrapes, not traffic.
const UNCOUNTED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Longest path written in an access line, in bytes; a longer one is cut at a character
/// boundary, so that a hostile client cannot make lines of any length.
const MAX_PATH_BYTES: usize = 256;

// === the request's scope ===

/// What the request's task holds while it is served.
struct Scope {
    trace: TraceContext,
    upstream: Cell<UpstreamNote>,
}

/// What the handler noted about the call it made for the request.
#[derive(Debug, Clone, Copy, Default)]
struct UpstreamNote {
    endpoint: Option<SocketAddr>,
    attempts: Option<u32>,
    error: Option<&'static str>,
}

tokio::task_local! {
    static REQUEST: Scope;
}

/// The trace context of the request being served by the current task, if any.
pub fn current() -> Option<TraceContext> {
    REQUEST.try_with(|scope| scope.trace).ok()
}

/// The trace id of the request being served by the current task, if any.
pub fn current_trace_id() -> Option<TraceId> {
    REQUEST.try_with(|scope| scope.trace.trace_id()).ok()
}

/// Notes, for the access line, the endpoint that answered the request's call and the attempts
/// it took. Does nothing outside a request.
pub fn note_upstream(endpoint: SocketAddr, attempts: u32) {
    let _ = REQUEST.try_with(|scope| {
        let mut note = scope.upstream.get();
        note.endpoint = Some(endpoint);
        note.attempts = Some(attempts);
        scope.upstream.set(note);
    });
}

/// Notes, for the access line, the kind of failure that made the request fail, and the
/// attempts made when they are known. Does nothing outside a request.
pub fn note_error(kind: &'static str, attempts: Option<u32>) {
    let _ = REQUEST.try_with(|scope| {
        let mut note = scope.upstream.get();
        note.error = Some(kind);
        note.attempts = attempts.or(note.attempts);
        scope.upstream.set(note);
    });
}

// === the layer ===

/// The request layer, for [`crate::serve`] to put around a router.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    mode: AccessLog,
    stats: Option<Arc<RequestStats>>,
}

impl RequestLog {
    /// Writes access lines by `mode`, and counts requests into `stats` when given.
    pub fn new(mode: AccessLog, stats: Option<Arc<RequestStats>>) -> Self {
        Self { mode, stats }
    }
}

impl<S> Layer<S> for RequestLog {
    type Service = RequestLogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLogService {
            inner,
            log: self.clone(),
        }
    }
}

/// A service wrapped by [`RequestLog`].
#[derive(Debug, Clone)]
pub struct RequestLogService<S> {
    inner: S,
    log: RequestLog,
}

impl<S, B, R> Service<Request<B>> for RequestLogService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let trace = TraceContext::from_headers(request.headers());
        let stats = match &self.log.stats {
            Some(stats) if !UNCOUNTED.contains(&request.uri().path()) => Some(Arc::clone(stats)),
            _ => None,
        };
        let line = (self.log.mode != AccessLog::Off)
            .then(|| (request.method().clone(), request.uri().clone()));
        let started = (line.is_some() || stats.is_some()).then(Instant::now);
        let scope = Scope {
            trace,
            upstream: Cell::default(),
        };
        RequestLogFuture {
            inner: REQUEST.scope(scope, self.inner.call(request)),
            started,
            line,
            stats,
            mode: self.log.mode,
        }
    }
}

pin_project! {
    /// The response future of [`RequestLogService`].
    pub struct RequestLogFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Scope, F>,
        started: Option<Instant>,
        line: Option<(Method, Uri)>,
        stats: Option<Arc<RequestStats>>,
        mode: AccessLog,
    }
}

impl<F, R, E> Future for RequestLogFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut response = match ready!(this.inner.as_mut().poll(cx)) {
            Ok(response) => response,
            Err(err) => return Poll::Ready(Err(err)),
        };
        let Some(scope) = this.inner.take_value() else {
            return Poll::Ready(Ok(response));
        };
        response
            .headers_mut()
            .insert(TRACERESPONSE, scope.trace.traceresponse());
        let status = response.status();
        let elapsed = this.started.map(|started| started.elapsed());
        if let (Some(stats), Some(elapsed)) = (this.stats.take(), elapsed) {
            stats.record(status, elapsed);
        }
        if let (Some((method, uri)), Some(elapsed)) = (this.line.take(), elapsed)
            && this.mode.logs(status)
        {
            access_line(&method, &uri, status, elapsed, &scope);
        }
        Poll::Ready(Ok(response))
    }
}

/// Writes the request's access line.
fn access_line(method: &Method, uri: &Uri, status: StatusCode, elapsed: Duration, scope: &Scope) {
    let path = uri.path();
    let path = &path[..path.floor_char_boundary(MAX_PATH_BYTES)];
    // Microseconds, written as milliseconds with three decimals.
    let duration_ms = elapsed.as_micros() as f64 / 1000.0;
    let trace_id = scope.trace.trace_id().hex();
    let amzn = scope.trace.amzn_root().map(|root| root.text());
    let upstream = scope.upstream.get();
    let endpoint = upstream.endpoint.map(AddrText::new);
    tracing::info!(
        method = method.as_str(),
        path,
        status = status.as_u16(),
        duration_ms,
        trace_id = trace_id.as_str(),
        amzn_trace_id = amzn.as_ref().map(Ascii::as_str),
        endpoint = endpoint.as_ref().map(AddrText::as_str),
        attempts = upstream.attempts,
        error = upstream.error,
        "request"
    );
}

/// A socket address written on the stack: `Display` through the formatting machinery costs
/// several times more, on every access line of hello.
struct AddrText {
    text: [u8; 64],
    len: usize,
}

impl AddrText {
    fn new(addr: SocketAddr) -> Self {
        let mut out = Self {
            text: [0; 64],
            len: 0,
        };
        match addr {
            SocketAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(".");
                    }
                    out.push(digits.format(octet));
                }
                out.push(":");
                out.push(digits.format(v4.port()));
            }
            // At most 58 characters: `[` 39 `%` 10 `]:` 5.
            SocketAddr::V6(v6) => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{v6}"));
            }
        }
        out
    }

    fn push(&mut self, part: &str) {
        let end = (self.len + part.len()).min(self.text.len());
        self.text[self.len..end].copy_from_slice(&part.as_bytes()[..end - self.len]);
        self.len = end;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, part: &str) -> std::fmt::Result {
        self.push(part);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    /// Log lines written while a test runs, as the JSON the services write.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).expect(line))
                .collect()
        }
    }

    async fn inner_log() -> &'static str {
        tracing::warn!(step = "inside", "working");
        "ok"
    }

    async fn failing() -> (StatusCode, &'static str) {
        note_error("no_endpoints", Some(0));
        (StatusCode::SERVICE_UNAVAILABLE, "no")
    }

    async fn calling() -> &'static str {
        note_upstream("10.0.1.7:3000".parse().unwrap(), 2);
        "called"
    }

    fn router(log: RequestLog) -> Router {
        Router::new()
            .route("/", get(inner_log))
            .route("/healthz", get(|| async { "ok" }))
            .route("/fail", get(failing))
            .route("/call", get(calling))
            .layer(log)
    }

    /// Sends `requests` through the router with `log`, capturing the log lines.
    async fn serve(log: RequestLog, requests: Vec<Request<Body>>) -> (Vec<Response<Body>>, Lines) {
        serve_as(true, log, requests).await
    }

    /// [`serve`], with JSON or readable lines.
    async fn serve_as(
        json: bool,
        log: RequestLog,
        requests: Vec<Request<Body>>,
    ) -> (Vec<Response<Body>>, Lines) {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = crate::telemetry::subscriber("info", move || writer.clone(), json);
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut responses = Vec::new();
        for request in requests {
            responses.push(router(log.clone()).oneshot(request).await.unwrap());
        }
        (responses, lines)
    }

    fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::empty()).unwrap()
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn every_line_of_a_request_carries_its_trace_id_and_the_access_line_ends_it() {
        let (responses, lines) = serve(
            RequestLog::default(),
            vec![get_with("/", &[("traceparent", TRACEPARENT)])],
        )
        .await;

        let lines = lines.json();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (inside, access) = (&lines[0], &lines[1]);
        assert_eq!(inside["message"], "working");
        assert_eq!(inside["step"], "inside");
        assert_eq!(inside["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(access["message"], "request");
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["method"], "GET");
        assert_eq!(access["path"], "/");
        assert_eq!(access["status"], 200);
        assert!(access["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(access["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(access["target"], "common::request_log");
        for absent in ["amzn_trace_id", "endpoint", "attempts", "error"] {
            assert!(access.get(absent).is_none(), "{access}");
        }
        let traceresponse = responses[0].headers()["traceresponse"].to_str().unwrap();
        assert!(
            traceresponse.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceresponse}"
        );
        assert!(traceresponse.ends_with("-01"), "{traceresponse}");
    }

    #[tokio::test]
    async fn readable_lines_of_a_request_end_with_its_trace_id() {
        let (_, lines) = serve_as(
            false,
            RequestLog::default(),
            vec![get_with("/", &[("traceparent", TRACEPARENT)])],
        )
        .await;

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let inside = text.lines().find(|line| line.contains("working")).unwrap();
        assert!(
            inside.ends_with(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{inside}"
        );
        let access = text.lines().find(|line| line.contains("request")).unwrap();
        assert!(
            access.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{access}"
        );
    }

    #[tokio::test]
    async fn the_access_line_has_the_albs_root_and_what_the_handler_noted() {
        let (_, lines) = serve(
            RequestLog::default(),
            vec![
                get_with(
                    "/call",
                    &[(
                        "x-amzn-trace-id",
                        "Self=1-67891233-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678",
                    )],
                ),
                get_with("/fail", &[]),
            ],
        )
        .await;

        let lines = lines.json();
        let (called, failed) = (&lines[0], &lines[1]);
        assert_eq!(called["trace_id"], "67891233abcdef012345678912345678");
        assert_eq!(
            called["amzn_trace_id"],
            "1-67891233-abcdef012345678912345678"
        );
        assert_eq!(called["endpoint"], "10.0.1.7:3000");
        assert_eq!(called["attempts"], 2);
        assert_eq!(failed["status"], 503);
        assert_eq!(failed["error"], "no_endpoints");
        assert_eq!(failed["attempts"], 0);
        assert_eq!(failed["trace_id"].as_str().unwrap().len(), 32);
    }

    #[tokio::test]
    async fn errors_mode_logs_only_server_errors_and_off_logs_nothing() {
        let requests = || {
            vec![
                get_with("/", &[]),
                get_with("/nowhere", &[]),
                get_with("/fail", &[]),
            ]
        };
        let (_, errors) = serve(RequestLog::new(AccessLog::Errors, None), requests()).await;
        let (responses, off) = serve(RequestLog::new(AccessLog::Off, None), requests()).await;

        let access: Vec<_> = errors
            .json()
            .into_iter()
            .filter(|line| line["message"] == "request")
            .collect();
        assert_eq!(access.len(), 1, "{access:?}");
        assert_eq!(access[0]["status"], 503);
        assert!(
            off.json().iter().all(|line| line["message"] != "request"),
            "{:?}",
            off.json()
        );
        // The trace still answers, and unmatched paths are inside the layer too.
        assert_eq!(responses[1].status(), StatusCode::NOT_FOUND);
        assert!(
            responses
                .iter()
                .all(|r| r.headers().contains_key("traceresponse"))
        );
    }

    #[tokio::test]
    async fn requests_are_counted_by_class_without_probes() {
        let stats = Arc::new(RequestStats::default());
        let log = RequestLog::new(AccessLog::Off, Some(Arc::clone(&stats)));
        serve(
            log,
            vec![
                get_with("/", &[]),
                get_with("/healthz", &[]),
                get_with("/nowhere", &[]),
                get_with("/fail", &[]),
            ],
        )
        .await;

        let interval = stats.take();
        assert_eq!(interval.requests, 3);
        assert_eq!(interval.client_errors, 1);
        assert_eq!(interval.server_errors, 1);
        assert_eq!(interval.latency.iter().map(|(_, n)| n).sum::<u64>(), 3);
        assert_eq!(stats.take().requests, 0);
    }

    #[tokio::test]
    async fn a_long_path_is_cut_and_a_malformed_header_is_not_repeated() {
        let path = format!("/{}", "é".repeat(300));
        let (_, lines) = serve(
            RequestLog::default(),
            vec![get_with(
                &path,
                &[
                    ("traceparent", "00-not-a-trace-id-01"),
                    ("x-amzn-trace-id", "Root=evil"),
                ],
            )],
        )
        .await;

        let text = lines.json()[0].to_string();
        let logged = lines.json()[0]["path"].as_str().unwrap().to_owned();
        assert!(logged.len() <= MAX_PATH_BYTES && path.starts_with(&logged));
        assert!(
            !text.contains("not-a-trace") && !text.contains("evil"),
            "{text}"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            "10.0.1.7:3000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:3000",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(AddrText::new(addr).as_str(), addr.to_string());
        }
    }

    #[test]
    fn outside_a_request_there_is_no_trace() {
        assert!(current().is_none());
        note_upstream("10.0.0.1:1".parse().unwrap(), 1);
        note_error("no_endpoints", None);
    }
}
