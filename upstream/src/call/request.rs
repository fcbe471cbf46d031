//! The request a call sends, checked once when it is built: a method, an origin-form target,
//! header fields, a body, and what the call should know besides (its deadline, whether it is
//! safe to repeat, its trace). Nothing of it can be changed without being checked again, so
//! every attempt writes it as it is (see [`crate::transport::http1`] for the byte rules).
//!
//! Refused, with a [`RequestError`]: a target that is not a path (`/...`) in visible ASCII, or
//! has a fragment; a header name or value with bytes HTTP does not allow (CR, LF, NUL, other
//! controls), whatever built it (`HeaderValue::from_maybe_shared_unchecked` included); the
//! headers the connection owns (`Connection`, `Keep-Alive`, `Transfer-Encoding`, `TE`,
//! `Trailer`, `Upgrade`, `Proxy-*`, and `Content-Length`, which is written from the body);
//! `traceparent` and `X-Amzn-Trace-Id`, which are written per attempt from the call's
//! [`TraceContext`]; `CONNECT`. `Host` may be given, once: it replaces the endpoint's address.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, request};

use super::trace::TraceContext;
use crate::transport::http1::{self, Outgoing};

/// Most bytes of a request's line and header fields together (servers commonly refuse more
/// than 8 to 64 KiB).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Why a request cannot be sent; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The method is `CONNECT`, which takes no path.
    #[error("CONNECT is not supported: calls are made with a path")]
    Connect,
    /// The target is not a path in origin form.
    #[error(
        "the request target must be a path starting with `/`, in visible ASCII (anything else \
         percent-encoded), without a fragment"
    )]
    BadTarget,
    /// The URI has a scheme or a host.
    #[error("the request's URI must be a path and query only: the upstream chooses the host")]
    NotOriginForm,
    /// A header name is not a token.
    #[error("a header name is not a valid HTTP token")]
    BadHeaderName,
    /// A header value has a byte HTTP does not allow.
    #[error("the value of header {0} has a byte HTTP does not allow (CR, LF, NUL, a control)")]
    BadHeaderValue(HeaderName),
    /// A header the connection sets.
    #[error("header {0} belongs to the connection and cannot be set by the caller")]
    Reserved(HeaderName),
    /// A tracing header, which each attempt writes from the call's trace context.
    #[error("header {0} is written for each attempt: attach a TraceContext instead")]
    TraceHeader(HeaderName),
    /// The line and the headers are too long.
    #[error("the request's line and headers exceed {MAX_REQUEST_HEAD} bytes")]
    TooLarge,
}

/// One request, checked: what a call sends to whichever endpoint each attempt goes to, and how
/// the call goes. Cheap to clone (its parts are shared).
///
/// ```
/// use upstream::Request;
/// use upstream::http::header::{ACCEPT, CONTENT_TYPE};
///
/// let request = Request::post("/orders", r#"{"sku":"a-1"}"#)?
///     .with_header(CONTENT_TYPE, "application/json")?
///     .with_header(ACCEPT, "application/json")?
///     .with_header("idempotency-key", "8e0f6a4c")?;
/// assert!(request.is_replayable());
/// assert!(Request::get("/a b").is_err());
/// # Ok::<(), upstream::RequestError>(())
/// ```
#[derive(Clone)]
pub struct Request {
    /// Names the head's bytes (line, fields, body length), for a connection to send the same
    /// head again without writing it anew: a fresh one whenever one of them changes; clones
    /// share it.
    id: u64,
    method: Method,
    /// What the method says, worked out once: it is idempotent; it defines a body (POST,
    /// PUT, PATCH: `Content-Length: 0` when empty); its answer has none (HEAD).
    idempotent_method: bool,
    defines_body: bool,
    head_only: bool,
    /// `<method> <target> HTTP/1.1\r\n`.
    line: Bytes,
    /// `host: <value>\r\n` when the caller named the host, else empty.
    host: Bytes,
    /// The caller's header lines, each `name: value\r\n`.
    fields: Bytes,
    body: Bytes,
    timeout: Option<Duration>,
    /// The caller said it is safe to repeat (explicitly, or with `Idempotency-Key`).
    idempotent: bool,
    trace: Option<TraceContext>,
}

impl Request {
    /// A request of `method` for `target` (a path and an optional query, such as
    /// `/orders?page=2`), with no headers and no body.
    pub fn new(method: Method, target: &str) -> Result<Self, RequestError> {
        if method == Method::CONNECT {
            return Err(RequestError::Connect);
        }
        if !http1::is_origin_form(target.as_bytes()) {
            return Err(RequestError::BadTarget);
        }
        let line = http1::request_line(method.as_str().as_bytes(), target.as_bytes());
        if line.len() > MAX_REQUEST_HEAD {
            return Err(RequestError::TooLarge);
        }
        Ok(Self {
            id: fresh_id(),
            idempotent_method: method.is_idempotent(),
            defines_body: method == Method::POST
                || method == Method::PUT
                || method == Method::PATCH,
            head_only: method == Method::HEAD,
            method,
            line: line.into(),
            host: Bytes::new(),
            fields: Bytes::new(),
            body: Bytes::new(),
            timeout: None,
            idempotent: false,
            trace: None,
        })
    }

    /// `GET target`.
    pub fn get(target: &str) -> Result<Self, RequestError> {
        Self::new(Method::GET, target)
    }

    /// `POST target` with `body`.
    pub fn post(target: &str, body: impl Into<Bytes>) -> Result<Self, RequestError> {
        Ok(Self::new(Method::POST, target)?.with_body(body))
    }

    /// Adds a header field (after any of the same name). `Host` replaces the endpoint's
    /// address; `Idempotency-Key` marks the call as safe to repeat. See the module's notes
    /// for what is refused.
    pub fn with_header<K, V>(mut self, name: K, value: V) -> Result<Self, RequestError>
    where
        HeaderName: TryFrom<K>,
        HeaderValue: TryFrom<V>,
    {
        let name = HeaderName::try_from(name).map_err(|_| RequestError::BadHeaderName)?;
        let value =
            HeaderValue::try_from(value).map_err(|_| RequestError::BadHeaderValue(name.clone()))?;
        self.push_field(&name, value.as_bytes())?;
        Ok(self)
    }

    /// Sets the body, sent with its `Content-Length`.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self.id = fresh_id();
        self
    }

    /// Sets the call's deadline, all attempts included, instead of the upstream's
    /// [`RetryPolicy::request_timeout`](crate::RetryPolicy::request_timeout). Each attempt
    /// still has at most the policy's attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the call as safe to repeat even though its method is not idempotent (the server
    /// deduplicates it): it may then be retried after it was sent, and hedged.
    pub fn mark_idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Attaches a trace: every attempt carries `traceparent` (and `X-Amzn-Trace-Id` when the
    /// context has a Root) with a parent id of its own.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The target: the path and query.
    pub fn target(&self) -> &str {
        let start = self.method.as_str().len() + 1;
        let end = self.line.len() - b" HTTP/1.1\r\n".len();
        // The target was checked to be ASCII.
        std::str::from_utf8(&self.line[start..end]).unwrap_or("/")
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The call's own deadline, when it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The trace the call belongs to, when it has one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// True when the request may be sent again after it may have reached a server: its
    /// method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110 section 9.2.2),
    /// or the caller said so ([`Request::mark_idempotent`], `Idempotency-Key`). Only such a
    /// request is retried after it was sent, or hedged.
    pub fn is_replayable(&self) -> bool {
        self.idempotent || self.idempotent_method
    }

    /// True when the caller named the host.
    pub(crate) fn names_host(&self) -> bool {
        !self.host.is_empty()
    }

    /// The request as the wire takes it, to an endpoint whose own header lines are
    /// `endpoint`.
    pub(crate) fn outgoing<'a>(&'a self, endpoint: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            id: self.id,
            line: &self.line,
            fields: [&self.host, endpoint, &self.fields],
            body: &self.body,
            always_length: self.defines_body,
            head_only: self.head_only,
            replayable: self.is_replayable(),
        }
    }

    /// Checks one header field and adds it.
    fn push_field(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), RequestError> {
        refuse_reserved(name)?;
        // Whatever made the value (an unchecked constructor too), it is checked here.
        if !http1::is_token(name.as_str().as_bytes()) {
            return Err(RequestError::BadHeaderName);
        }
        if !http1::is_field_value(value) {
            return Err(RequestError::BadHeaderValue(name.clone()));
        }
        let mut line = Vec::with_capacity(name.as_str().len() + value.len() + 4);
        http1::field_line(&mut line, name.as_str().as_bytes(), value);
        let is_host = *name == http::header::HOST;
        // A host line replaces the one before.
        let kept = self.fields.len() + if is_host { 0 } else { self.host.len() };
        if self.line.len() + kept + line.len() > MAX_REQUEST_HEAD {
            return Err(RequestError::TooLarge);
        }
        self.id = fresh_id();
        if is_host {
            self.host = line.into();
        } else {
            if name.as_str() == "idempotency-key" {
                self.idempotent = true;
            }
            let mut fields = Vec::from(std::mem::take(&mut self.fields));
            fields.extend_from_slice(&line);
            self.fields = fields.into();
        }
        Ok(())
    }
}

/// A request head id never given before (0 is never given: it means "not reusable").
fn fresh_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Refuses the headers the connection owns and those written per attempt.
fn refuse_reserved(name: &HeaderName) -> Result<(), RequestError> {
    match name.as_str() {
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
        | "content-length" => Err(RequestError::Reserved(name.clone())),
        proxy if proxy.starts_with("proxy-") => Err(RequestError::Reserved(name.clone())),
        "traceparent" | "x-amzn-trace-id" => Err(RequestError::TraceHeader(name.clone())),
        _ => Ok(()),
    }
}

impl<B: Into<Bytes>> TryFrom<http::Request<B>> for Request {
    type Error = RequestError;

    /// Takes the method, the path and query, every header (checked as
    /// [`Request::with_header`] checks them), the body, and a [`TraceContext`] from the
    /// extensions. The URI must be a path: the upstream chooses the host. The version is
    /// ignored (calls are HTTP/1.1).
    fn try_from(request: http::Request<B>) -> Result<Self, RequestError> {
        let (parts, body): (request::Parts, B) = request.into_parts();
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return Err(RequestError::NotOriginForm);
        }
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str());
        let mut call = Self::new(parts.method, target)?.with_body(body);
        for (name, value) in &parts.headers {
            call.push_field(name, value.as_bytes())?;
        }
        call.trace = parts.extensions.get::<TraceContext>().copied();
        Ok(call)
    }
}

impl fmt::Debug for Request {
    /// The method, the target and the sizes; never the header values (they may hold
    /// credentials) nor the body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target())
            .field("header_bytes", &(self.host.len() + self.fields.len()))
            .field("body_bytes", &self.body.len())
            .field("timeout", &self.timeout)
            .field("replayable", &self.is_replayable())
            .field("traced", &self.trace.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::header::{ACCEPT, CONTENT_LENGTH, HOST};

    fn head(request: &Request) -> String {
        let mut out = Vec::new();
        http1::write_head(&mut out, &request.outgoing(b"host: 10.0.0.1:80\r\n"), None);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_is_written_as_built() {
        let request = Request::post("/orders?x=1", "{}")
            .unwrap()
            .with_header(ACCEPT, "application/json")
            .unwrap()
            .with_header("x-tag", "a")
            .unwrap()
            .with_header("x-tag", "b")
            .unwrap();
        assert_eq!(
            head(&request),
            "POST /orders?x=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\naccept: application/json\r\n\
             x-tag: a\r\nx-tag: b\r\ncontent-length: 2\r\n\r\n"
        );
        assert_eq!(request.target(), "/orders?x=1");
        assert!(!request.is_replayable());
    }

    #[test]
    fn a_host_of_the_callers_replaces_the_endpoints() {
        let request = Request::get("/")
            .unwrap()
            .with_header(HOST, "name.internal")
            .unwrap();
        assert!(request.names_host());
        let mut out = Vec::new();
        http1::write_head(&mut out, &request.outgoing(b"via: 1.1 hello\r\n"), None);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: name.internal\r\nvia: 1.1 hello\r\n\r\n"
        );
    }

    #[test]
    fn which_calls_may_be_repeated() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(Request::new(method, "/").unwrap().is_replayable());
        }
        let post = Request::post("/", "x").unwrap();
        assert!(!post.is_replayable());
        assert!(post.clone().mark_idempotent().is_replayable());
        let keyed = post.with_header("Idempotency-Key", "k1").unwrap();
        assert!(keyed.is_replayable());
        assert!(!Request::new(Method::PATCH, "/").unwrap().is_replayable());
    }

    #[test]
    fn bad_targets_and_methods_are_refused() {
        for bad in ["", "orders", "*", "/a b", "/a#b", "/a\r\nx: y", "/\0", "/é"] {
            assert_eq!(
                Request::get(bad).unwrap_err(),
                RequestError::BadTarget,
                "{bad:?}"
            );
        }
        assert_eq!(
            Request::new(Method::CONNECT, "/").unwrap_err(),
            RequestError::Connect
        );
        let absolute = http::Request::get("http://elsewhere/x")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(
            Request::try_from(absolute).unwrap_err(),
            RequestError::NotOriginForm
        );
    }

    #[test]
    fn reserved_and_tracing_headers_are_refused() {
        let request = Request::get("/").unwrap();
        for name in [
            "connection",
            "Keep-Alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(
                matches!(
                    request.clone().with_header(name, "x"),
                    Err(RequestError::Reserved(_))
                ),
                "{name}"
            );
        }
        assert_eq!(
            request
                .clone()
                .with_header(CONTENT_LENGTH, "5")
                .unwrap_err(),
            RequestError::Reserved(CONTENT_LENGTH)
        );
        assert!(matches!(
            request.with_header("traceparent", "00-x"),
            Err(RequestError::TraceHeader(_))
        ));
    }

    #[test]
    fn an_injected_line_end_is_refused_whatever_built_the_value() {
        let request = Request::get("/").unwrap();
        assert!(request.clone().with_header("x-a", "a\r\nb").is_err());
        assert!(request.clone().with_header("x-a", &b"a\nb"[..]).is_err());
        // `HeaderValue::from_maybe_shared_unchecked` (unsafe, so not callable here) hands its
        // bytes to the same check, whichever public constructor it is given to.
        let name = HeaderName::from_static("x-a");
        for bad in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b", b"\x1b[2J"] {
            assert_eq!(
                request.clone().push_field(&name, bad),
                Err(RequestError::BadHeaderValue(name.clone())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_http_request_converts_with_its_trace() {
        let trace = TraceContext::new([7; 16], true).unwrap();
        let request = http::Request::put("/items/7?v=2")
            .header("content-type", "text/plain")
            .extension(trace)
            .body("seven")
            .unwrap();
        let request = Request::try_from(request).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.target(), "/items/7?v=2");
        assert_eq!(request.body().as_ref(), b"seven");
        assert_eq!(request.trace(), Some(&trace));
        assert!(head(&request).contains("content-type: text/plain\r\n"));
    }

    #[test]
    fn the_head_is_bounded() {
        let long = "v".repeat(MAX_REQUEST_HEAD);
        assert_eq!(
            Request::get("/")
                .unwrap()
                .with_header("x-long", long.as_str())
                .unwrap_err(),
            RequestError::TooLarge
        );
    }
}
