//! Serving a router over HTTP/1.1 with every resource bounded: the number of connections, the
//! time to the first byte of a request and to the end of its head, the time a keep-alive
//! connection may sit idle, and the time graceful shutdown may wait for in-flight requests.
//! Request spans are keyed by the matched route.
//!
//! A connection that sends no byte within [`Limits::header_read_timeout`] of being accepted is
//! closed (within [`Limits::idle_timeout`], if that is shorter), and so is one whose request
//! head is still arriving that long after its first byte; a keep-alive connection waits at
//! most [`Limits::idle_timeout`] for its next request.
//!
//! At [`Limits::max_connections`] the limit sheds rather than stops (nginx's
//! `ngx_drain_connections`): a new connection closes the oldest connection that is idle between
//! requests or has sent nothing yet, and takes its place. A connection in the middle of a
//! request (its head begun, the request being handled or its answer being written) is never
//! closed for this; only when every connection is, does the server stop accepting until one of
//! them finishes its request.
//!
//! After the shutdown signal, in-flight requests get [`Limits::shutdown_timeout`] to finish;
//! then the remaining connections are closed and `serve` returns, so the process exits 0 before
//! the orchestrator's SIGKILL.
//!
//! What a request costs here is a few atomic operations on its own connection's state and two
//! clock readings, as before: no timer registered, no shared counter written, and no lock
//! unless the accept loop is waiting at the limit with no connection to shed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::request_log::RequestLogService;

// === Limits and metrics ===

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once. At it, a new connection closes the oldest one that is idle or
    /// has sent nothing; when every one is in the middle of a request, the server stops
    /// accepting until one finishes.
    pub max_connections: usize,
    /// Time from a request's first byte to its last header byte, and from accepting a
    /// connection to its first byte (or `idle_timeout`, if shorter).
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
    silent_closed: Counter,
    slow_closed: Counter,
    shed_silent: Counter,
    shed_idle: Counter,
    limit_reached: Counter,
    aborted_at_shutdown: Counter,
}

impl ConnectionMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let shed = Family::<[(&'static str, &'static str); 1], Counter>::default();
        // Both series exist from the start, at 0. One statement each: the family's guard lives
        // to the end of the statement, and a second insertion under it would deadlock.
        let shed_silent = shed.get_or_create(&[("state", "silent")]).clone();
        let shed_idle = shed.get_or_create(&[("state", "idle")]).clone();
        let metrics = Self {
            shed_silent,
            shed_idle,
            ..Self::default()
        };
        registry.register(
            "connections_open",
            "Client connections open now",
            metrics.open.clone(),
        );
        registry.register(
            "connections_silent_closed",
            "Client connections closed because no request began within the header timeout of accepting them",
            metrics.silent_closed.clone(),
        );
        registry.register(
            "connections_slow_closed",
            "Client connections closed because a request head took too long",
            metrics.slow_closed.clone(),
        );
        registry.register(
            "connections_shed",
            "Client connections closed at the connection limit to admit a new one, by state: idle between requests, or silent (no byte yet)",
            shed,
        );
        registry.register(
            "connections_limit_reached",
            "Times a new connection had to wait at the connection limit because every connection was in the middle of a request",
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

// === serve ===

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
    let serving = Serving::new(router, request_log, limits, metrics.clone());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut table = Table::new(limits.max_connections, metrics.clone());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // pause rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // At the limit, the connection just accepted waits, unread, for a shed one to close.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                table.below_limit();
                slot
            }
            Err(_) => tokio::select! {
                () = &mut shutdown => break,
                slot = table.make_room(&slots) => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            },
        };
        let conn = serving.start(stream, slot, &table.shared, &mut connections);
        table.admit(conn);
    }
    drop(listener);
    tokio::select! {
        () = serving.graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            let left = connections.len();
            metrics.aborted_at_shutdown.inc_by(left as u64);
            tracing::warn!(connections = left, timeout = ?limits.shutdown_timeout, "shutdown deadline passed; closing the remaining connections");
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// What each connection is served with.
struct Serving {
    http: hyper::server::conn::http1::Builder,
    service: RequestLogService<Router>,
    limits: Limits,
    metrics: ConnectionMetrics,
    graceful: GracefulShutdown,
}

impl Serving {
    fn new(
        router: Router,
        request_log: crate::RequestLog,
        limits: Limits,
        metrics: ConnectionMetrics,
    ) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        // The idle and head timeouts are the connection's own (`Guarded`): hyper's header
        // timer would start a boxed timer per request. `writev(false)`: an answer's head and
        // body go out in one `send` from hyper's buffer (the body copied in) instead of a
        // `writev` of the two, whose path in the kernel (`vfs_writev`, `fdget_pos`,
        // `sock_write_iter`) costs more than copying a small body (docs/performance.md, "One
        // send per answer").
        http.header_read_timeout(None)
            .keep_alive(true)
            .writev(false);
        Self {
            http,
            service: tower::Layer::layer(&request_log, with_tracing(router)),
            limits,
            metrics,
            graceful: GracefulShutdown::new(),
        }
    }

    /// Serves `stream` in a task of `connections` that holds `slot` until it ends.
    fn start(
        &self,
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        shared: &Arc<Shared>,
        connections: &mut JoinSet<()>,
    ) -> Arc<Conn> {
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::default());
        let io = TokioIo::new(Guarded::new(
            stream,
            Arc::clone(&conn),
            Arc::clone(shared),
            &self.limits,
            &self.metrics,
        ));
        let service = answering(self.service.clone(), Arc::clone(&conn));
        let connection = self.graceful.watch(self.http.serve_connection(io, service));
        let open = Open::new(Arc::clone(&conn), self.metrics.open.clone(), slot);
        let task = connections.spawn(async move {
            let _open = open;
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
        conn.set_task(task);
        conn
    }
}

/// The router as a connection's service: the request's head is complete when it is called,
/// and its answer is produced when the body it returns is dropped.
fn answering(
    service: RequestLogService<Router>,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = axum::http::Response<Answer>,
    Error = Infallible,
    Future = impl Send,
> {
    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        // The head is complete: the handler's time is not the client's to be slow in.
        conn.request_began();
        Answering {
            // The request layer and axum's `Router` are always ready, so `poll_ready` need
            // not be called.
            route: tower::Service::call(&mut service.clone(), request),
            conn: Some(Arc::clone(&conn)),
        }
    })
}

pin_project! {
    /// The router's future for one request; the answer it yields marks the connection
    /// `ANSWERED` when hyper drops the answer's body.
    struct Answering<F> {
        #[pin]
        route: F,
        conn: Option<Arc<Conn>>,
    }
}

impl<F> Future for Answering<F>
where
    F: Future<Output = Result<axum::response::Response, Infallible>>,
{
    type Output = Result<axum::http::Response<Answer>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.route.poll(cx));
        let conn = this.conn.take();
        Poll::Ready(Ok(response.map(|body| Answer { body, conn })))
    }
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

// === A connection's phase ===

/// Accepted; not read yet.
const NEW: u8 = 0;
/// Read once, and nothing had arrived. May be shed.
const SILENT: u8 = 1;
/// A request head has begun arriving.
const HEAD: u8 = 2;
/// The head is complete; the request is being handled.
const BUSY: u8 = 3;
/// The answer is produced; its last bytes may not be written yet.
const ANSWERED: u8 = 4;
/// The answer is written; waiting for the next request. May be shed.
const IDLE: u8 = 5;
/// Taken by the accept loop, to be closed.
const SHED: u8 = 6;
/// The connection's task has ended.
const CLOSED: u8 = 7;

/// What the accept loop and a connection's task share about the connection. The phase moves
/// `NEW` → `SILENT` when a first read finds nothing (a client that sends its request with the
/// connection goes straight to `HEAD`), → `HEAD` at the first byte, → `BUSY` when the router
/// gets the request, → `ANSWERED` when the answer's body is dropped (all of it handed to
/// hyper), → `IDLE` when hyper has written it all, → `HEAD` at the next request's first byte.
/// Only the accept loop moves a phase to `SHED`, and only from `SILENT` or `IDLE`, by
/// compare-and-swap: a connection whose first byte is read first is not shed.
///
/// A byte that has reached the kernel but not yet been read does not count: a request sent
/// at the moment its idle connection is shed is lost with the connection, as on any server
/// that closes idle keep-alive connections, and the client retries it on a new one (RFC 9112,
/// section 9.3.1).
#[derive(Debug, Default)]
struct Conn {
    phase: AtomicU8,
    /// The connection's task, to abort when it is shed. Taken when the task ends, so that a
    /// table entry left behind does not keep the task's memory.
    task: Mutex<Option<AbortHandle>>,
}

impl Conn {
    fn set_task(&self, task: AbortHandle) {
        // Set before the loop can shed the connection; if the task has already ended, the
        // handle stays with this entry until the table drops it.
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Takes the connection to be shed if it is silent or idle; returns the phase it was in.
    fn claim(&self) -> Option<u8> {
        let phase = self.phase.load(Ordering::SeqCst);
        let sheddable = matches!(phase, SILENT | IDLE)
            && self
                .phase
                .compare_exchange(phase, SHED, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok();
        sheddable.then_some(phase)
    }

    /// Closes a claimed connection: its task is dropped, with the socket and the slot.
    fn shed(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }

    /// Whether the connection has closed or is closing.
    fn gone(&self) -> bool {
        matches!(self.phase.load(Ordering::Relaxed), SHED | CLOSED)
    }

    /// The router has the request. A request that hyper had already read in full (pipelined)
    /// on a connection shed meanwhile leaves it `SHED`: the connection is closing anyway, and
    /// a client that pipelines retries what was not answered (RFC 9112, section 9.3.2).
    fn request_began(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |phase| {
                (phase != SHED).then_some(BUSY)
            });
    }
}

/// A connection's hold on its slot and on the open-connections gauge, released when its task
/// ends or is aborted.
struct Open {
    conn: Arc<Conn>,
    gauge: Gauge,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(conn: Arc<Conn>, gauge: Gauge, slot: OwnedSemaphorePermit) -> Self {
        gauge.inc();
        Self {
            conn,
            gauge,
            _slot: slot,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.conn.phase.store(CLOSED, Ordering::SeqCst);
        self.conn
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.gauge.dec();
    }
}

// === The table: which connection to shed ===

/// Most connections that may offer themselves at once while the accept loop waits; past it
/// they set `Shared::overflowed` and the loop looks through the whole table instead.
const MAX_OFFERS: usize = 64;

/// What the accept loop shares with every connection: a way for a connection that becomes
/// idle to say so while the loop waits at the limit with nothing to shed.
#[derive(Debug, Default)]
struct Shared {
    /// Set while the loop needs to hear of connections that become idle. A connection reads it
    /// once per answer; it is written only at the limit.
    wanted: AtomicBool,
    /// Connections that became idle while `wanted` was set, in that order.
    offers: Mutex<VecDeque<Arc<Conn>>>,
    /// An offer was dropped because `offers` was full.
    overflowed: AtomicBool,
    offered: Notify,
}

impl Shared {
    /// Moves `conn` to `SILENT` or `IDLE`, where the accept loop may shed it, and offers it to
    /// the loop if the loop is waiting for one.
    fn became(&self, conn: &Arc<Conn>, sheddable: u8) {
        // Sequentially consistent with the loop's setting of `wanted` and reading of phases:
        // either the loop sees this phase, or this connection sees `wanted`. Only the
        // connection itself moves its phase out of `NEW` or `ANSWERED`, so a store will do.
        conn.phase.store(sheddable, Ordering::SeqCst);
        if self.wanted.load(Ordering::SeqCst) {
            self.offer(conn);
        }
    }

    fn offer(&self, conn: &Arc<Conn>) {
        let mut offers = self.offers.lock().unwrap_or_else(PoisonError::into_inner);
        if offers.len() < MAX_OFFERS {
            offers.push_back(Arc::clone(conn));
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        drop(offers);
        self.offered.notify_one();
    }

    /// The first offered connection that can still be claimed, with the phase it was in.
    fn take_offer(&self) -> Option<(Arc<Conn>, u8)> {
        let mut offers = self.offers.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = offers.pop_front() {
            if let Some(phase) = conn.claim() {
                return Some((conn, phase));
            }
        }
        None
    }

    fn clear_offers(&self) {
        self.offers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The accept loop's view of its connections, to find the one to shed at the limit in a few
/// steps, not a look at every connection per accept.
///
/// Connections are kept in the order they were accepted; finding the one to shed pops them
/// from the front: a connection that is closed is dropped, the first silent or idle one is
/// shed, and one in the middle of a request goes to the back (it has shown it is in use, so it
/// counts as new). When the table is full of silent or idle connections (a flood), that is one
/// step per accept. When a pass finds every connection in the middle of a request, the loop
/// does not pass again: it sets `Shared::wanted`, and from then on each connection that
/// becomes idle offers itself, so the next connection to shed is the first offer, until the
/// server is below the limit again. Entries of closed connections are dropped in passing, and
/// all at once when they are a fifth of the table, so keeping the order costs O(1) per accept.
struct Table {
    order: VecDeque<Arc<Conn>>,
    shared: Arc<Shared>,
    /// Every connection not among the offers could not be shed when the last pass looked at
    /// it (or was admitted since), and has not become silent or idle since.
    offers_complete: bool,
    max: usize,
    metrics: ConnectionMetrics,
}

impl Table {
    fn new(max: usize, metrics: ConnectionMetrics) -> Self {
        Self {
            order: VecDeque::new(),
            shared: Arc::default(),
            offers_complete: false,
            max,
            metrics,
        }
    }

    /// A new connection: the newest in the order. (It offers itself once it is silent, if the
    /// loop is listening for offers.)
    fn admit(&mut self, conn: Arc<Conn>) {
        if self.order.len() > self.max + self.max / 4 {
            // At most `max` are open, so this drops at least a fifth of the entries.
            self.order.retain(|conn| !conn.gone());
        }
        self.order.push_back(conn);
    }

    /// A slot was free: nothing needs to be shed, nor to be heard of.
    fn below_limit(&mut self) {
        if self.offers_complete || self.shared.wanted.load(Ordering::Relaxed) {
            self.shared.wanted.store(false, Ordering::SeqCst);
            self.offers_complete = false;
            self.shared.clear_offers();
        }
    }

    /// Sheds a silent or idle connection, or waits until one exists or a connection closes;
    /// returns the slot that was freed.
    async fn make_room(
        &mut self,
        slots: &Arc<Semaphore>,
    ) -> Result<OwnedSemaphorePermit, AcquireError> {
        let mut counted = false;
        loop {
            if let Some((conn, phase)) = self.sheddable() {
                conn.shed();
                let shed = if phase == SILENT {
                    &self.metrics.shed_silent
                } else {
                    &self.metrics.shed_idle
                };
                shed.inc();
                tracing::debug!(
                    silent = phase == SILENT,
                    "connection limit reached; closed a connection to admit a new one"
                );
                // The shed connection's task gives its slot back as it is dropped.
                return Arc::clone(slots).acquire_owned().await;
            }
            if !counted {
                counted = true;
                self.metrics.limit_reached.inc();
                tracing::warn!(
                    max = self.max,
                    "connection limit reached with every connection mid-request; not accepting"
                );
            }
            tokio::select! {
                slot = Arc::clone(slots).acquire_owned() => return slot,
                () = self.shared.offered.notified() => {}
            }
        }
    }

    /// The connection to shed, claimed, with the phase it was in.
    fn sheddable(&mut self) -> Option<(Arc<Conn>, u8)> {
        if self.shared.overflowed.swap(false, Ordering::Relaxed) {
            self.offers_complete = false;
        }
        if self.offers_complete {
            return self.shared.take_offer();
        }
        // Set before the pass looks at any phase, and both sequentially consistent with a
        // connection's move to `IDLE` and its reading of `wanted`: a connection that becomes
        // idle after the pass looked at it sees `wanted` and offers itself.
        self.shared.wanted.store(true, Ordering::SeqCst);
        self.shared.clear_offers();
        let found = self.oldest_sheddable();
        if found.is_some() {
            self.shared.wanted.store(false, Ordering::SeqCst);
        } else {
            self.offers_complete = true;
        }
        found
    }

    /// One pass from the front of the table: see [`Table`].
    fn oldest_sheddable(&mut self) -> Option<(Arc<Conn>, u8)> {
        for _ in 0..self.order.len() {
            let conn = self.order.pop_front()?;
            if let Some(phase) = conn.claim() {
                return Some((conn, phase));
            }
            if !conn.gone() {
                self.order.push_back(conn);
            }
        }
        None
    }
}

// === The connection's IO ===

/// A client connection that fails its reads once it has waited too long: for its first byte
/// (the header timeout from accept, or the idle timeout if shorter), for the rest of a request head (the header timeout from
/// its first byte), or for its next request (the idle timeout from the last answer). It also
/// moves the connection's phase at the first byte of a request, and when the answer is all
/// written.
///
/// A request costs no timer work: the head's timer is reset at the first byte but polled only
/// if the head takes more than one read, and the wait timer, armed once, is moved to the
/// latest deadline only when it fires (the answers since then have pushed it back).
struct Guarded {
    stream: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The wait for a first byte: the header timeout, or the idle timeout if shorter, so that
    /// a connection that has sent nothing is not kept longer than an idle one.
    silent_timeout: Duration,
    /// Since when the connection has waited for a request: its accept, or the last answer.
    waiting_since: Instant,
    /// Fires no later than the current wait's deadline.
    wait: Pin<Box<Sleep>>,
    /// Fires `header_timeout` after the head's first byte.
    head: Pin<Box<Sleep>>,
    silent_closed: Counter,
    slow_closed: Counter,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        conn: Arc<Conn>,
        shared: Arc<Shared>,
        limits: &Limits,
        metrics: &ConnectionMetrics,
    ) -> Self {
        let now = Instant::now();
        let silent_timeout = limits.header_read_timeout.min(limits.idle_timeout);
        Self {
            stream,
            conn,
            shared,
            header_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            silent_timeout,
            waiting_since: now,
            wait: Box::pin(tokio::time::sleep_until(now + silent_timeout)),
            head: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
            silent_closed: metrics.silent_closed.clone(),
            slow_closed: metrics.slow_closed.clone(),
        }
    }

    /// An error when the phase's deadline has passed; otherwise the timer is set to wake the
    /// connection at it.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.conn.phase.load(Ordering::Relaxed) {
            NEW | SILENT if self.waited(cx, self.silent_timeout) => {
                self.silent_closed.inc();
                Err(timed_out("no request began within the header timeout"))
            }
            HEAD if self.head.as_mut().poll(cx).is_ready() => {
                self.slow_closed.inc();
                Err(timed_out("request head not received in time"))
            }
            IDLE if self.waited(cx, self.idle_timeout) => {
                Err(timed_out("no request within the idle timeout"))
            }
            SHED => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed at the connection limit to admit a new connection",
            )),
            _ => Ok(()),
        }
    }

    /// Whether the current wait has lasted `timeout`; if not, the wait timer will wake the
    /// connection when it has.
    fn waited(&mut self, cx: &mut Context<'_>, timeout: Duration) -> bool {
        while self.wait.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = self.waiting_since + timeout;
            if now >= deadline {
                return true;
            }
            // A silent wait is no longer than an idle one, so the timer also fires no later
            // than an idle wait that would begin now.
            self.wait.as_mut().reset(deadline);
        }
        false
    }

    /// A read found nothing: a new connection is now silent.
    fn nothing_arrived(&mut self) {
        if self.conn.phase.load(Ordering::Relaxed) == NEW {
            self.shared.became(&self.conn, SILENT);
        }
    }

    /// A read brought bytes: a request head begins, unless one is under way.
    fn bytes_arrived(&mut self) {
        let phase = self.conn.phase.load(Ordering::Relaxed);
        if matches!(phase, NEW | SILENT | IDLE)
            && self
                .conn
                .phase
                .compare_exchange(phase, HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let deadline = Instant::now() + self.header_timeout;
            self.head.as_mut().reset(deadline);
        }
    }

    /// The answer's last byte is written: the wait for the next request starts.
    fn answered(&mut self, cx: &mut Context<'_>) {
        self.waiting_since = Instant::now();
        self.shared.became(&self.conn, IDLE);
        // hyper may not read again before the next request arrives; a wait timer that fired
        // while the request was under way must be armed again now.
        if self.wait.is_elapsed() {
            let _ = self.waited(cx, self.idle_timeout);
        }
    }
}

fn timed_out(message: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, message)
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
        if Pin::new(&mut this.stream).poll_read(cx, buf)?.is_pending() {
            this.nothing_arrived();
            return Poll::Pending;
        }
        if buf.filled().len() > before {
            this.bytes_arrived();
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
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper flushes its IO only once everything it has buffered is written, so a flush after
    /// the answer was produced means the answer is all written.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        if this.conn.phase.load(Ordering::Relaxed) == ANSWERED {
            this.answered(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An answer's body, which marks its connection `ANSWERED` when hyper drops it: hyper drops a
/// body once its last frame is in hyper's write buffer, before flushing that buffer.
struct Answer {
    body: Body,
    conn: Option<Arc<Conn>>,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            let _ =
                conn.phase
                    .compare_exchange(BUSY, ANSWERED, Ordering::Relaxed, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of connections in these phases, admitted in this order.
    fn table(phases: &[u8]) -> (Table, Vec<Arc<Conn>>) {
        let mut table = Table::new(phases.len(), ConnectionMetrics::default());
        let conns: Vec<_> = phases
            .iter()
            .map(|&phase| {
                let conn = Arc::new(Conn::default());
                conn.phase.store(phase, Ordering::Relaxed);
                table.admit(Arc::clone(&conn));
                conn
            })
            .collect();
        (table, conns)
    }

    /// The index in `conns` of the connection `table` sheds next, and the phase it was in.
    fn next_shed(table: &mut Table, conns: &[Arc<Conn>]) -> Option<(usize, u8)> {
        let (shed, phase) = table.sheddable()?;
        let index = conns.iter().position(|conn| Arc::ptr_eq(conn, &shed));
        Some((index.unwrap_or(usize::MAX), phase))
    }

    #[test]
    fn the_oldest_silent_or_idle_connection_is_shed_and_none_mid_request() {
        let (mut table, conns) = table(&[HEAD, IDLE, NEW, SILENT, BUSY, ANSWERED, IDLE]);

        assert_eq!(next_shed(&mut table, &conns), Some((1, IDLE)));
        assert_eq!(next_shed(&mut table, &conns), Some((3, SILENT)));
        assert_eq!(next_shed(&mut table, &conns), Some((6, IDLE)));
        assert_eq!(next_shed(&mut table, &conns), None);
        for (i, conn) in conns.iter().enumerate() {
            let shed = [1, 3, 6].contains(&i);
            assert_eq!(conn.phase.load(Ordering::Relaxed) == SHED, shed, "{i}");
        }
    }

    #[test]
    fn with_every_connection_mid_request_the_first_to_become_idle_is_shed() {
        let (mut table, conns) = table(&[BUSY, HEAD, NEW]);
        assert_eq!(next_shed(&mut table, &conns), None);

        table.shared.became(&conns[2], SILENT);
        table.shared.became(&conns[0], IDLE);

        assert_eq!(next_shed(&mut table, &conns), Some((2, SILENT)));
        assert_eq!(next_shed(&mut table, &conns), Some((0, IDLE)));
        assert_eq!(next_shed(&mut table, &conns), None);
    }

    #[test]
    fn an_offer_taken_back_by_a_new_request_is_not_shed() {
        let (mut table, conns) = table(&[BUSY, BUSY]);
        assert_eq!(next_shed(&mut table, &conns), None);

        table.shared.became(&conns[0], IDLE);
        conns[0].phase.store(HEAD, Ordering::Relaxed);
        table.shared.became(&conns[1], IDLE);

        assert_eq!(next_shed(&mut table, &conns), Some((1, IDLE)));
    }

    #[test]
    fn below_the_limit_connections_stop_offering_themselves() {
        let (mut table, conns) = table(&[BUSY, BUSY]);
        assert_eq!(next_shed(&mut table, &conns), None);

        table.below_limit();
        table.shared.became(&conns[1], IDLE);

        assert!(table.shared.offers.lock().unwrap().is_empty());
        assert_eq!(next_shed(&mut table, &conns), Some((1, IDLE)));
    }

    #[test]
    fn when_offers_overflow_the_table_is_passed_again_oldest_first() {
        let phases = vec![BUSY; MAX_OFFERS + 2];
        let (mut table, conns) = table(&phases);
        assert_eq!(next_shed(&mut table, &conns), None);

        for conn in conns.iter().rev() {
            table.shared.became(conn, IDLE);
        }

        assert_eq!(next_shed(&mut table, &conns), Some((0, IDLE)));
    }

    #[test]
    fn entries_of_closed_connections_do_not_accumulate() {
        let (mut table, _open) = table(&[BUSY; 8]);

        for round in 0..100 {
            let conn = Arc::new(Conn::default());
            table.admit(Arc::clone(&conn));
            conn.phase.store(CLOSED, Ordering::Relaxed);
            assert!(table.order.len() <= 8 + 8 / 4 + 1, "round {round}");
        }
    }
}
