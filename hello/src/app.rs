//! The router and its handlers. Handlers see one [`Upstream`] in the state and nothing of
//! discovery's insides. `GET /` notes for the request's access line
//! ([`common::request_log`]) the endpoint and attempts, or the kind of failure.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use common::request_log::{note_error, note_upstream};
use common::trace::{AmznRoot, TraceId};
use common::{NameAnswer, TraceContext};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tower::util::MapResponseLayer;

use crate::config::VIA_PSEUDONYM;
use upstream::{CallError, Upstream};

/// What the handlers share. axum clones the state for every request (the route's service and
/// the `State` extractor each hold one), so it is one `Arc`: one count to raise and lower, and
/// a pointer in the futures it is moved through.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    instance: Arc<str>,
    upstream: Upstream,
    registry: Registry,
    answered: Counter,
    unavailable: Counter,
    loops: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
}

impl AppState {
    /// State for the instance named `instance`, calling `upstream`; registers the request
    /// counters in `registry`, which `/metrics` then serves whole.
    pub fn new(instance: impl Into<Arc<str>>, upstream: Upstream, mut registry: Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let answered = requests
            .get_or_create(&RequestLabels { outcome: "ok" })
            .clone();
        let unavailable = requests
            .get_or_create(&RequestLabels {
                outcome: "unavailable",
            })
            .clone();
        registry.register("requests", "Requests to GET /, by outcome", requests);
        let loops = Counter::default();
        registry.register(
            "loops_refused",
            "Requests refused with 508 because they came back through hello",
            loops.clone(),
        );
        Self {
            inner: Arc::new(Shared {
                instance: instance.into(),
                upstream,
                registry,
                answered,
                unavailable,
                loops,
            }),
        }
    }

    /// The upstream the handlers call.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Every registered metric in the OpenMetrics text format, as `/metrics` serves it.
    pub fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/endpoints", get(debug_endpoints))
        .layer(MapResponseLayer::new(log_failure))
        .with_state(state)
}

/// The JSON answer of `GET /`: `{"greeting","name","hello_instance","name_instance",
/// "endpoint","attempts"}`. Written by hand because it is on every request: strings with
/// nothing to escape (the usual case) are copied as they are, the rest go through serde_json.
fn greeting_json(
    greeting: &str,
    name: &str,
    hello_instance: &str,
    name_instance: &str,
    endpoint: SocketAddr,
    attempts: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + greeting.len() * 2);
    out.extend_from_slice(b"{\"greeting\":");
    push_json_str(&mut out, greeting);
    out.extend_from_slice(b",\"name\":");
    push_json_str(&mut out, name);
    out.extend_from_slice(b",\"hello_instance\":");
    push_json_str(&mut out, hello_instance);
    out.extend_from_slice(b",\"name_instance\":");
    push_json_str(&mut out, name_instance);
    out.extend_from_slice(b",\"endpoint\":\"");
    // An address and port never need escaping.
    let mut decimal = itoa::Buffer::new();
    match endpoint {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(decimal.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(decimal.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.extend_from_slice(b"\",\"attempts\":");
    out.extend_from_slice(decimal.format(attempts).as_bytes());
    out.push(b'}');
    out
}

/// Appends `value` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\')
    {
        // Writing into a Vec cannot fail, and a string always serializes.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// What hello asks `name`: `GET /` with `Accept: application/json`, built and checked once.
static NAME_REQUEST: LazyLock<upstream::Request> = LazyLock::new(|| {
    // A constant path and header, which pass the checks: this cannot fail.
    upstream::Request::get("/")
        .and_then(|request| request.with_header(header::ACCEPT, "application/json"))
        .expect("a constant, valid request")
});

/// The trace of this request as the upstream sends it on: the same trace id, sampled flag and
/// X-Ray root (the ALB's, or the trace id in X-Ray's form), each attempt with a parent id of
/// its own.
fn upstream_trace(trace: &TraceContext) -> Option<upstream::TraceContext> {
    let trace_id = trace.trace_id();
    let root = trace.amzn_root().unwrap_or(AmznRoot::of(trace_id));
    // A `TraceId` is never zero, and an `AmznRoot` is always `1-<8 hex>-<24 hex>`.
    let context = upstream::TraceContext::new(trace_id.to_bytes(), trace.sampled()).ok()?;
    Some(
        context
            .with_amzn_root(root.text().as_str())
            .unwrap_or(context),
    )
}

/// `GET /`. Takes the request whole: the `HeaderMap` extractor would clone the headers. Not an
/// `async fn`: the request is read and dropped before the future is made, so that the future,
/// which axum moves into a box on every request, holds only what the call needs.
fn hello(
    State(state): State<AppState>,
    request: Request,
) -> impl Future<Output = Result<Response, AppError>> {
    let looped = came_through_hello(request.headers());
    let json = common::wants_json(request.headers());
    drop(request);
    answer(state, looped, json)
}

/// hello's answer, once the request has been read: `looped` when it came through hello already.
async fn answer(state: AppState, looped: bool, json: bool) -> Result<Response, AppError> {
    if looped {
        // A record that points back at hello (a misconfigured name, a reused address) would
        // make every request call hello again, without end: refuse at once, never amplify.
        state.inner.loops.inc();
        return Ok((
            StatusCode::LOOP_DETECTED,
            "loop detected: this request already passed through hello (Via)\n",
        )
            .into_response());
    }
    let trace = common::request_log::current().unwrap_or_else(TraceContext::start);
    let decode = |answer: upstream::Answer<'_>| NameAnswer::decode(answer.body());
    let mut call = NAME_REQUEST.clone();
    if let Some(upstream_trace) = upstream_trace(&trace) {
        call = call.with_trace(upstream_trace);
    }
    let reply = match state.inner.upstream.call(&call, decode).await {
        Ok(reply) => reply,
        Err(error) => {
            state.inner.unavailable.inc();
            // No attempt is made without an endpoint; the count of a failed call's attempts
            // is in its message only.
            let attempts = (error.kind() != "all_attempts_failed").then_some(0);
            note_error(error.kind(), attempts);
            return Err(AppError {
                error,
                json,
                trace_id: trace.trace_id(),
            });
        }
    };
    state.inner.answered.inc();
    note_upstream(reply.endpoint, reply.attempts);
    let answer = &reply.answer;
    // Built by hand: the formatting machinery costs more than the copies.
    let mut greeting = String::with_capacity(
        32 + state.inner.instance.len() + answer.name.len() + answer.instance.len(),
    );
    for part in [
        "Hello (from ",
        &state.inner.instance,
        ") ",
        &answer.name,
        " (from ",
        &answer.instance,
        ")",
    ] {
        greeting.push_str(part);
    }
    if json {
        let body = greeting_json(
            &greeting,
            &answer.name,
            &state.inner.instance,
            &answer.instance,
            reply.endpoint,
            reply.attempts,
        );
        // A static value: from a `&str`, axum would copy it into a new allocation per answer.
        let content_type = HeaderValue::from_static("application/json");
        Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
    } else {
        Ok((greeting + "\n").into_response())
    }
}

/// True when a `Via` entry (RFC 9110 section 7.6.3: `<protocol> <received-by> [comment]`)
/// names hello as the receiver.
fn came_through_hello(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|entry| entry.split_whitespace().nth(1) == Some(VIA_PSEUDONYM))
}

/// Ready while at least one endpoint is known. The load balancer checks `/healthz` instead:
/// an outage of `name` must not take `hello` out of service with it.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    let known = state.inner.upstream.known_endpoints();
    if known > 0 {
        (StatusCode::OK, format!("ready: {known} endpoints"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoints known for {}", state.inner.upstream.name()),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.encode_metrics() {
        Ok(text) => (
            // prometheus-client writes the OpenMetrics text format (with `# EOF`).
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn debug_endpoints(State(state): State<AppState>) -> Json<upstream::Report> {
    Json(state.inner.upstream.report())
}

/// A request `hello` could not answer with a name: 503, with the reason in words and the
/// request's trace id to quote, as text or JSON like the answer would have been. Turning it
/// into a response has no side effect; the cause is logged once, by [`log_failure`].
#[derive(Debug)]
pub struct AppError {
    error: CallError,
    json: bool,
    trace_id: TraceId,
}

/// The logged form of an [`AppError`], carried from the response to [`log_failure`].
#[derive(Debug, Clone)]
struct Failure(Arc<str>);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let why = self.error.chain();
        let trace_id = self.trace_id.hex();
        let mut response = if self.json {
            let body = json!({
                "error": self.error.kind(),
                "message": why,
                "service": self.error.name(),
                "trace_id": trace_id.as_str(),
            });
            (status, Json(body)).into_response()
        } else {
            (status, format!("{why}\ntrace_id: {trace_id}\n")).into_response()
        };
        response.extensions_mut().insert(Failure(why.into()));
        response
    }
}

/// Logs each failed request's cause, once.
fn log_failure(response: Response) -> Response {
    if let Some(Failure(why)) = response.extensions().get::<Failure>() {
        tracing::warn!(status = response.status().as_u16(), error = %why, "answered with an error");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_json_is_json_with_every_string_intact() {
        let tricky = "Zo\u{eb} \"the\" \\ one\u{7f}";
        let body = greeting_json(
            "Hello (from h1) Ann (from n1)",
            tricky,
            "h1",
            "3f2a9c1e@eu-west-1b",
            "10.0.1.7:3000".parse().unwrap(),
            2,
        );
        let v6 = greeting_json("g", "n", "h", "i", "[::1]:65535".parse().unwrap(), 10);
        let v6: serde_json::Value = serde_json::from_slice(&v6).unwrap();
        assert_eq!(v6["endpoint"], "[::1]:65535");
        assert_eq!(v6["attempts"], 10);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["greeting"], "Hello (from h1) Ann (from n1)");
        assert_eq!(json["name"], tricky);
        assert_eq!(json["hello_instance"], "h1");
        assert_eq!(json["name_instance"], "3f2a9c1e@eu-west-1b");
        assert_eq!(json["endpoint"], "10.0.1.7:3000");
        assert_eq!(json["attempts"], 2);
    }
}
