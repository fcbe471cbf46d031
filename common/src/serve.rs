//! Serving a router over HTTP/1.1 with every resource bounded: the number of connections, the
//! time to read a request head once it has begun, the time a keep-alive connection may sit
//! idle, and the time graceful shutdown may wait for in-flight requests. Request spans are
//! keyed by the matched route.
//!
//! A slow client (one header byte a second) is closed once [`Limits::header_read_timeout`]
//! has passed since its first byte; a client that opens connections and sends nothing is
//! closed after [`Limits::idle_timeout`]; past [`Limits::max_connections`] the server stops
//! accepting until a connection closes, so the kernel's backlog queues the rest. After the
//! shutdown signal, in-flight requests get [`Limits::shutdown_timeout`] to finish; then the
//! remaining connections are closed and `serve` returns, so the process exits 0 before the
//! orchestrator's SIGKILL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it the server stops accepting until one closes.
    pub max_connections: usize,
    /// Time from a request's first byte to its last header byte.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request. Longer than a load
    /// balancer's own idle timeout (the ALB's is 60 s), so that the balancer, not the server,
    /// closes idle connections and never sends a request on one being closed.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish after the shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of the bounds at work, registered by [`ConnectionMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    slow_closed: Counter,
    limit_reached: Counter,
    aborted_at_shutdown: Counter,
}

impl ConnectionMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            metrics.open.clone(),
        );
        registry.register(
            "connections_slow_closed",
            "Client connections closed because a request head took too long",
            metrics.slow_closed.clone(),
        );
        registry.register(
            "connections_limit_reached",
            "Times the connection limit stopped the server from accepting",
            metrics.limit_reached.clone(),
        );
        registry.register(
            "connections_aborted_at_shutdown",
            "Connections still open when the shutdown deadline passed",
            metrics.aborted_at_shutdown.clone(),
        );
        metrics
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes and every
/// in-flight request has been answered, or the shutdown deadline has passed. `request_log`
/// wraps the whole router once (a layer per route would box each route again).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    request_log: crate::RequestLog,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
    metrics: ConnectionMetrics,
) -> std::io::Result<()> {
    let router = tower::Layer::layer(&request_log, with_tracing(router));
    let mut http = hyper::server::conn::http1::Builder::new();
    // The idle and head timeouts are the connection's own (`Guarded`): hyper's header timer
    // would start a boxed timer per request.
    http.header_read_timeout(None).keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        if slots.available_permits() == 0 {
            metrics.limit_reached.inc();
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; not accepting"
            );
        }
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match stream {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // pause rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(AtomicU8::new(IDLE));
        let io = TokioIo::new(Guarded::new(
            stream,
            Arc::clone(&phase),
            &limits,
            metrics.slow_closed.clone(),
        ));
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| {
            // The head is complete: the handler's time is not the client's to be slow in.
            phase.store(BUSY, Ordering::Relaxed);
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let open = metrics.open.clone();
        open.inc();
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            let left = connections.len();
            metrics.aborted_at_shutdown.inc_by(left as u64);
            tracing::warn!(connections = left, timeout = ?limits.shutdown_timeout, "shutdown deadline passed; closing the remaining connections");
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// Adds a span per request, keyed by the route, when debug logging is on for this module or
/// tower-http; otherwise the layer would cost every request for events nobody records.
fn with_tracing(router: Router) -> Router {
    if !tracing::enabled!(Level::DEBUG)
        && !tracing::enabled!(target: "tower_http::trace", Level::DEBUG)
    {
        return router;
    }
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::debug_span!("request", method = %request.method(), route)
            })
            // A 503 from `/readyz` is an answer, not a fault; the handlers log the faults they see.
            .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
    )
}

/// The connection waits for a request.
const IDLE: u8 = 0;
/// A request head has begun arriving.
const HEAD: u8 = 1;
/// The head is complete; the request is being handled.
const BUSY: u8 = 2;

/// A client connection that fails its reads once it has waited for a request longer than the
/// idle timeout, or a request head has been arriving for longer than the header timeout. The
/// phase moves to `HEAD` on the first byte read while idle, to `BUSY` when the router gets the
/// request, and back to `IDLE` when the answer is written.
///
/// A request costs no timer work: the head's timer is reset at the first byte but registered
/// only if the head takes more than one read, and the idle timer, armed once, is moved to the
/// latest idle deadline only when it fires (the answers since then have pushed it back).
struct Guarded {
    stream: TcpStream,
    phase: Arc<AtomicU8>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Since when the connection has waited for a request: its start, or the last answer.
    idle_since: Instant,
    /// Fires no later than `idle_since + idle_timeout`.
    idle: Pin<Box<Sleep>>,
    /// Fires `header_timeout` after the head's first byte.
    head: Pin<Box<Sleep>>,
    slow_closed: Counter,
}

impl Guarded {
    fn new(stream: TcpStream, phase: Arc<AtomicU8>, limits: &Limits, slow_closed: Counter) -> Self {
        let now = Instant::now();
        Self {
            stream,
            phase,
            header_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            idle_since: now,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            head: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
            slow_closed,
        }
    }

    /// An error when the phase's deadline has passed; otherwise the timer is set to wake the
    /// connection at it.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.phase.load(Ordering::Relaxed) {
            HEAD if self.head.as_mut().poll(cx).is_ready() => {
                self.slow_closed.inc();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not received in time",
                ))
            }
            IDLE => {
                while self.idle.as_mut().poll(cx).is_ready() {
                    let deadline = self.idle_since + self.idle_timeout;
                    if Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no request within the idle timeout",
                        ));
                    }
                    self.idle.as_mut().reset(deadline);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The answer is being written: the wait for the next request starts.
    fn answering(&mut self) {
        if self.phase.swap(IDLE, Ordering::Relaxed) != IDLE {
            self.idle_since = Instant::now();
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.check_deadline(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before
            && this
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let deadline = Instant::now() + this.header_timeout;
            this.head.as_mut().reset(deadline);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.answering();
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.answering();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// True when the request's `Accept` header asks for JSON; both services answer plain text
/// otherwise.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json"))
}
