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
use hyper_util::rt::{TokioIo, TokioTimer};
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
/// in-flight request has been answered, or the shutdown deadline has passed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
    metrics: ConnectionMetrics,
) -> std::io::Result<()> {
    let router = with_tracing(router);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer starts when the connection is ready for a request, so it bounds
    // idle time plus head; the head alone is bounded per connection below.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .keep_alive(true);
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
            limits.header_read_timeout,
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

/// A client connection that fails its reads once a request head has been arriving for longer
/// than the header timeout. The phase moves to `HEAD` on the first byte read while idle, to
/// `BUSY` when the router gets the request, and back to `IDLE` when the answer is written.
struct Guarded {
    stream: TcpStream,
    phase: Arc<AtomicU8>,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    slow_closed: Counter,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        phase: Arc<AtomicU8>,
        timeout: Duration,
        slow_closed: Counter,
    ) -> Self {
        Self {
            stream,
            phase,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            slow_closed,
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
        if this.phase.load(Ordering::Relaxed) == HEAD && this.deadline.as_mut().poll(cx).is_ready()
        {
            this.slow_closed.inc();
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before
            && this
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let deadline = Instant::now() + this.timeout;
            this.deadline.as_mut().reset(deadline);
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
        self.phase.store(IDLE, Ordering::Relaxed);
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.phase.store(IDLE, Ordering::Relaxed);
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
