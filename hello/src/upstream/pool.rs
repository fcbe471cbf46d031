//! One endpoint's connections: HTTP/1.1 keep-alive connections to a single address, kept idle
//! in proportion to need. A connection goes back to the pool only when its answer was read to
//! the end, and only while the pool holds fewer idle connections than the endpoint's peak of
//! requests in flight over the last sweep or two (about a second); so an endpoint keeps about
//! as many connections as its recent concurrency, without closing and reopening them between
//! bursts, and an endpoint that one request in a hundred reaches keeps one. Each sweep closes
//! the idle connections beyond that peak and those idle longer than the idle timeout; all of
//! them close when the endpoint leaves the set.
//!
//! hyper's own client adds a pool keyed by scheme and host, a hash per request, URI parsing
//! and retries of its own; a pool per endpoint needs none of that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a request got no answer head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the connect timeout.
    #[error("cannot connect within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection was refused or failed.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("request failed")]
    Http(#[source] hyper::Error),
}

impl PoolError {
    /// True when no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::ConnectTimeout(_) | Self::Connect(_))
    }
}

/// How a pool connects and keeps connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// How long an unused connection stays open.
    pub idle_timeout: Duration,
}

/// Idle connections to one address.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    options: PoolOptions,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Peak of requests in flight since the last sweep, and in the sweep before.
    peak: AtomicUsize,
    previous_peak: AtomicUsize,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Empty<Bytes>>,
    since: Instant,
}

/// A connection lent to one request; [`Lease::release`] gives it back once the answer has been
/// read to the end. Dropped otherwise, it closes.
#[derive(Debug)]
pub struct Lease {
    sender: SendRequest<Empty<Bytes>>,
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, options: PoolOptions) -> Self {
        Self {
            addr,
            options,
            idle: Mutex::new(Vec::new()),
            peak: AtomicUsize::new(0),
            previous_peak: AtomicUsize::new(0),
        }
    }

    /// Sends `request` on an idle connection, or a new one; returns the answer's head (the body
    /// still to be read) and the connection's lease.
    pub async fn send(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        let mut request = request;
        // An idle connection the server closed a moment ago fails before the request leaves;
        // then the request goes on a new connection, as it would have without the pool.
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease { sender })),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Http(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Http)?;
        Ok((response, Lease { sender }))
    }

    /// Gives a connection back after its answer was read to the end, while the pool holds
    /// fewer idle connections than the recent peak of `in_flight` (the endpoint's requests in
    /// flight, this one included).
    pub fn release(&self, lease: Lease, in_flight: usize) {
        if lease.sender.is_closed() {
            return;
        }
        let peak = self
            .peak
            .fetch_max(in_flight, Ordering::Relaxed)
            .max(in_flight);
        let keep = peak.max(self.previous_peak.load(Ordering::Relaxed));
        let mut idle = self.idle();
        if idle.len() < keep {
            idle.push(Idle {
                sender: lease.sender,
                since: Instant::now(),
            });
        }
    }

    /// Starts a new peak window, and closes the idle connections beyond the last two windows'
    /// peak (the oldest first) and those idle longer than the idle timeout.
    pub fn sweep(&self, now: Instant) {
        let last = self.peak.swap(0, Ordering::Relaxed);
        let before = self.previous_peak.swap(last, Ordering::Relaxed);
        let keep = last.max(before).max(1);
        let timeout = self.options.idle_timeout;
        let mut idle = self.idle();
        idle.retain(|idle| {
            now.saturating_duration_since(idle.since) < timeout && !idle.sender.is_closed()
        });
        let excess = idle.len().saturating_sub(keep);
        idle.drain(..excess);
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some(candidate) = idle.pop() {
            let fresh = now.saturating_duration_since(candidate.since) < self.options.idle_timeout;
            if fresh && !candidate.sender.is_closed() {
                return Some(candidate.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, PoolError> {
        let timeout = self.options.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout(timeout))?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(endpoint = %addr, error = %err, "connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        // A list of connections, consistent after every push and pop: a poisoned lock still
        // holds good data.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
