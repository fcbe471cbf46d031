//! One endpoint's connections: HTTP/1.1 keep-alive connections to a single address, kept idle
//! in proportion to need, and the exchange of one request and its answer on them. A
//! connection goes back to the pool only when its answer was read to the end, and only while
//! the pool holds fewer idle connections than the endpoint's peak of requests in flight over
//! the last sweep or two (about a second); so an endpoint keeps about as many connections as
//! its recent concurrency, without closing and reopening them between bursts, and an endpoint
//! that one request in a hundred reaches keeps one. Each sweep closes the idle connections
//! beyond that peak, those idle longer than the idle timeout, and those the server closed;
//! all of them close when the endpoint leaves the set.
//!
//! The exchange runs in the caller's task, on [`super::http1`]'s wire format: one write of a
//! head made once per endpoint, reads into the connection's own buffer, the answer parsed
//! where it lies. hyper's client would add a task per connection, channels between it and
//! the caller, a header map per answer and a pool keyed by host: on a proxy's request path
//! that was a quarter of hello's instructions (docs/performance.md).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http1::{self, Dechunker, Framing, MAX_HEAD_BYTES, Parsed, WireError};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 4096;
/// A connection whose buffer grew past this (a long answer) gets a new one before it idles.
const KEEP_BUFFER: usize = 16 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the connect timeout.
    #[error("cannot connect within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection was refused or failed.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// Sending or reading failed.
    #[error("connection failed")]
    Io(#[source] std::io::Error),
    /// The server closed the connection before the answer was complete.
    #[error("connection closed before the answer was complete")]
    Closed,
    /// The answer is not well-formed HTTP/1.1, or too large.
    #[error(transparent)]
    Wire(WireError),
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
    conn: Conn,
    since: Instant,
}

/// A connection and its read buffer, kept across requests.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// An answer: its status, and for a 2xx answer whose body was asked for, the body. Hand it to
/// [`Pool::release`] when done, so that its connection can serve the next request.
#[derive(Debug)]
pub struct Exchange {
    conn: Conn,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Range<usize>,
    reusable: bool,
}

impl Exchange {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// How long the server asked to be left alone (`Retry-After`), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The answer's body; empty when it was not read.
    pub fn body(&self) -> &[u8] {
        &self.conn.buf[self.body.clone()]
    }
}

/// A failed exchange, and whether the server had said nothing at all: on a connection that
/// had been idle, that is a server closing it as the request left, and the request may go on
/// a new connection (it is a `GET`).
struct Failed {
    error: PoolError,
    silent: bool,
}

impl From<WireError> for Failed {
    fn from(error: WireError) -> Self {
        Self {
            error: PoolError::Wire(error),
            silent: false,
        }
    }
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

    /// Sends the request `head` on an idle connection, or a new one, and reads the answer's
    /// head; for a 2xx answer and a `body_limit`, also its body, failing past the limit. `now`
    /// is the caller's clock reading, to tell idle connections that have expired.
    pub async fn send(
        &self,
        head: &[u8],
        body_limit: Option<usize>,
        now: Instant,
    ) -> Result<Exchange, PoolError> {
        while let Some(conn) = self.checkout(now) {
            match exchange(conn, head, body_limit).await {
                Err(Failed { silent: true, .. }) => continue,
                result => return result.map_err(|failed| failed.error),
            }
        }
        let conn = self.connect().await?;
        exchange(conn, head, body_limit)
            .await
            .map_err(|failed| failed.error)
    }

    /// Gives a connection back after its answer was read, while the pool holds fewer idle
    /// connections than the recent peak of `in_flight` (the endpoint's requests in flight,
    /// this one included). A connection whose answer left it unusable closes. `now` is when the
    /// answer was read, the start of the connection's idle time.
    pub fn release(&self, exchange: Exchange, in_flight: usize, now: Instant) {
        if !exchange.reusable {
            return;
        }
        let mut conn = exchange.conn;
        if conn.buf.capacity() > KEEP_BUFFER {
            conn.buf = Vec::with_capacity(READ_SIZE);
        }
        let peak = self
            .peak
            .fetch_max(in_flight, Ordering::Relaxed)
            .max(in_flight);
        let keep = peak.max(self.previous_peak.load(Ordering::Relaxed));
        let mut idle = self.idle();
        if idle.len() < keep {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Starts a new peak window, and closes the idle connections beyond the last two windows'
    /// peak (the oldest first), those idle longer than the idle timeout and those the server
    /// closed.
    pub fn sweep(&self, now: Instant) {
        let last = self.peak.swap(0, Ordering::Relaxed);
        let before = self.previous_peak.swap(last, Ordering::Relaxed);
        let keep = last.max(before).max(1);
        let timeout = self.options.idle_timeout;
        let mut idle = self.idle();
        idle.retain(|idle| {
            now.saturating_duration_since(idle.since) < timeout && idle.conn.is_open()
        });
        let excess = idle.len().saturating_sub(keep);
        idle.drain(..excess);
    }

    /// A pool with the default connect and idle timeouts, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(addr: SocketAddr) -> Self {
        Self::new(
            addr,
            PoolOptions {
                connect_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_secs(30),
            },
        )
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self, now: Instant) -> Option<Conn> {
        loop {
            let candidate = self.idle().pop()?;
            let fresh = now.saturating_duration_since(candidate.since) < self.options.idle_timeout;
            if fresh && candidate.conn.is_open() {
                return Some(candidate.conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let timeout = self.options.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout(timeout))?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(READ_SIZE),
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        // A list of connections, consistent after every push and pop: a poisoned lock still
        // holds good data.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Conn {
    /// False when the server has closed the connection, or sent something unasked for, while
    /// it was idle. Costs no system call unless the socket was seen readable.
    fn is_open(&self) -> bool {
        match self
            .stream
            .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: bytes or a close arrived, or the readiness is left over from the last
            // answer's read. Only an empty read says it is still open.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Reads what the socket has into the buffer; 0 at the end of the stream.
    async fn read(&mut self) -> Result<usize, Failed> {
        self.buf.reserve(READ_SIZE);
        let silent = self.buf.is_empty();
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(Failed {
                error: PoolError::Closed,
                silent,
            }),
            Ok(read) => Ok(read),
            Err(err) => Err(Failed {
                error: PoolError::Io(err),
                silent,
            }),
        }
    }
}

/// Writes `head` on `conn` and reads the answer (see [`Pool::send`]).
async fn exchange(
    mut conn: Conn,
    request: &[u8],
    body_limit: Option<usize>,
) -> Result<Exchange, Failed> {
    conn.buf.clear();
    if let Err(err) = conn.stream.write_all(request).await {
        return Err(Failed {
            error: PoolError::Io(err),
            silent: true,
        });
    }
    // The head, after any interim (1xx) answers; nothing to parse before the first read.
    conn.read().await?;
    let mut start = 0;
    let (head, head_end) = loop {
        match http1::parse_head(&conn.buf[start..])? {
            Parsed::Complete(head, len) => break (head, start + len),
            Parsed::Interim(len) => start += len,
            Parsed::Partial if conn.buf.len() >= MAX_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge(MAX_HEAD_BYTES).into());
            }
            Parsed::Partial => {
                conn.read().await?;
            }
        }
    };
    let status =
        StatusCode::from_u16(head.status).map_err(|_| WireError::Head("bad status line"))?;
    let answer = |conn, body, reusable| Exchange {
        conn,
        status,
        retry_after: head.retry_after,
        body,
        reusable,
    };
    // Only a success's body is read; another answer's connection closes with it.
    let Some(limit) = body_limit.filter(|_| status.is_success()) else {
        return Ok(answer(conn, head_end..head_end, false));
    };
    let (body_end, reusable) = match head.framing {
        Framing::Length(length) => {
            let end = usize::try_from(length)
                .ok()
                .filter(|&length| length <= limit)
                .ok_or(WireError::TooLarge(limit))?
                + head_end;
            while conn.buf.len() < end {
                conn.read().await?;
            }
            // Bytes beyond the answer were not asked for: the connection is not trusted again.
            (end, head.keep_alive && conn.buf.len() == end)
        }
        Framing::Chunked => {
            let mut decoder = Dechunker::new(limit);
            let (mut raw, mut out) = (head_end, head_end);
            loop {
                let progress = decoder.decode(&mut conn.buf, raw, out)?;
                raw += progress.consumed;
                out = progress.body_end;
                if progress.done {
                    break;
                }
                conn.read().await?;
            }
            (out, head.keep_alive && conn.buf.len() == raw)
        }
        Framing::UntilClose => loop {
            if conn.buf.len() - head_end > limit {
                return Err(WireError::TooLarge(limit).into());
            }
            match conn.read().await {
                Ok(_) => {}
                Err(Failed {
                    error: PoolError::Closed,
                    ..
                }) => break (conn.buf.len(), false),
                Err(failed) => return Err(failed),
            }
        },
    };
    Ok(answer(conn, head_end..body_end, reusable))
}
