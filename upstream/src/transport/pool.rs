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
//! The exchange runs in the caller's task, on [`super::http1`]'s wire format: the head written
//! into the connection's own reused buffer and sent with the body in one write (a short
//! request that may be sent twice goes out with the turn's others, from the [`Outbox`]),
//! reads into the connection's read buffer, the answer parsed where it lies. Its head is read
//! first ([`Exchange`]); the caller then reads the body up to its bound, or lets the connection
//! close with an answer it does not want. hyper's client would add a task per connection, channels
//! between it and the caller, a header map per answer and a pool keyed by host: on a proxy's
//! request path that was a quarter of hello's instructions (docs/performance.md).
//!
//! A reused connection that the server closed just as the request left (it had said nothing)
//! is not a failure of the endpoint: the request goes on another connection, if nothing of it
//! had been written or it may be sent twice ([`Outgoing::replayable`]); otherwise the error is
//! the caller's, who must not repeat it.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::http1::{
    self, AttemptFields, Dechunker, Framing, Head, MAX_HEAD_BYTES, Outgoing, Parsed, WireError,
};
use super::outbox::{self, Outbox};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 4096;
/// A connection whose buffers grew past this (a long answer or head) gets new ones before it
/// idles.
const KEEP_BUFFER: usize = 16 * 1024;
/// Room for a request head, made once per connection (the buffer grows for longer heads).
const HEAD_SIZE: usize = 512;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the connect timeout.
    #[error("cannot connect within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection was refused or failed.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// Writing failed before any byte of the request left.
    #[error("connection failed before the request was sent")]
    NotSent(#[source] std::io::Error),
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

    /// True when no byte of the request can have reached the server.
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout(_) | Self::Connect(_) | Self::NotSent(_)
        )
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
    /// Where short requests that may be sent twice wait for the turn's others; none writes
    /// every request at once.
    outbox: Option<Arc<Outbox>>,
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

/// A connection, its read buffer and the buffer its request heads are written into, both
/// kept across requests. Its writing half is shared with the [`Outbox`] while a request waits
/// there.
#[derive(Debug)]
struct Conn {
    reader: OwnedReadHalf,
    writer: Arc<OwnedWriteHalf>,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// The [`Outgoing::id`] of the head in `out`, 0 for none: the same request sent again
    /// on this connection (it belongs to one endpoint) is not written anew.
    out_id: u64,
}

/// An answer on its connection: its head read and parsed where it lies in the connection's
/// buffer; its body read there by [`Exchange::read_body`]. Hand it to [`Pool::release`] when
/// done: its connection serves the next request if the body was read to its end, and closes
/// otherwise.
#[derive(Debug)]
pub struct Exchange {
    conn: Conn,
    head: Head,
    status: StatusCode,
    /// Where the final head lies in the connection's buffer (interim heads before it).
    head_range: Range<usize>,
    /// Where the body lies, once read; empty before.
    body: Range<usize>,
    reusable: bool,
}

/// What an exchange needs of a request once its head is written.
#[derive(Debug, Clone, Copy)]
struct Sending<'a> {
    body: &'a [u8],
    replayable: bool,
    head_only: bool,
}

/// Where a request goes first: an idle connection with the head in its buffer, or a new
/// connection, with the head written and the [`Outgoing::id`] it stands for.
#[derive(Debug)]
enum Start {
    Idle(Conn),
    New(Vec<u8>, u64),
}

/// An answer's head as [`Conn::exchange`] read it: what it says, its status, and where it
/// lies in the connection's buffer.
struct Answer {
    head: Head,
    status: StatusCode,
    range: Range<usize>,
}

/// A failed exchange: the error, whether the server had said nothing at all, and whether any
/// byte of the request had left.
struct Failed {
    error: PoolError,
    silent: bool,
    sent: bool,
}

impl From<WireError> for Failed {
    fn from(error: WireError) -> Self {
        Self {
            error: PoolError::Wire(error),
            silent: false,
            sent: true,
        }
    }
}

// === impl Pool ===

impl Pool {
    /// An empty pool for `addr`; short requests that may be sent twice wait in `outbox`, when
    /// there is one, for the turn's others.
    pub fn new(addr: SocketAddr, options: PoolOptions, outbox: Option<Arc<Outbox>>) -> Self {
        Self {
            addr,
            options,
            outbox,
            idle: Mutex::new(Vec::new()),
            peak: AtomicUsize::new(0),
            previous_peak: AtomicUsize::new(0),
        }
    }

    /// Sends `request`, with the `attempt`'s own header lines, on an idle connection or a new
    /// one, and reads the answer's head. `now` is the caller's clock reading, to tell idle
    /// connections that have expired. The head is written into the connection's buffer (or a
    /// buffer for a new one) before the returned future is first polled: the future holds only
    /// the body.
    pub fn send<'a>(
        &'a self,
        request: &Outgoing<'a>,
        attempt: Option<&dyn AttemptFields>,
        now: Instant,
    ) -> impl Future<Output = Result<Exchange, PoolError>> + Send + use<'a> {
        let start = match self.checkout(now) {
            Some(mut conn) => {
                prepare(&mut conn.out, &mut conn.out_id, request, attempt);
                Start::Idle(conn)
            }
            None => {
                let (mut out, mut id) = (Vec::with_capacity(HEAD_SIZE), 0);
                prepare(&mut out, &mut id, request, attempt);
                Start::New(out, id)
            }
        };
        let sending = Sending {
            body: request.body,
            replayable: request.replayable,
            head_only: request.head_only,
        };
        self.send_prepared(start, sending, now)
    }

    /// Sends the head prepared in `start`.
    async fn send_prepared(
        &self,
        mut start: Start,
        sending: Sending<'_>,
        now: Instant,
    ) -> Result<Exchange, PoolError> {
        loop {
            let (mut conn, reused) = match start {
                Start::Idle(conn) => (conn, true),
                Start::New(out, id) => {
                    let mut conn = self.connect().await?;
                    (conn.out, conn.out_id) = (out, id);
                    (conn, false)
                }
            };
            match conn.exchange(sending, self.outbox.as_deref()).await {
                Ok(answer) => return Ok(Exchange::new(conn, answer)),
                // A reused connection that the server closed as the request left: not the
                // endpoint's failure. The head goes on another connection.
                Err(Failed {
                    silent: true, sent, ..
                }) if reused && (sending.replayable || !sent) => {
                    start = match self.checkout(now) {
                        Some(mut next) => {
                            std::mem::swap(&mut next.out, &mut conn.out);
                            next.out_id = conn.out_id;
                            Start::Idle(next)
                        }
                        None => Start::New(std::mem::take(&mut conn.out), conn.out_id),
                    };
                }
                Err(failed) => return Err(failed.error),
            }
        }
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
        if conn.out.capacity() > KEEP_BUFFER {
            conn.out = Vec::with_capacity(HEAD_SIZE);
            conn.out_id = 0;
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

    /// A pool with the default connect and idle timeouts, for tests; inside a runtime, with an
    /// outbox written by a task of that runtime.
    #[cfg(test)]
    pub(crate) fn for_tests(addr: SocketAddr) -> Self {
        let outbox = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let outbox = Arc::new(Outbox::new());
            let stop = tokio_util::sync::CancellationToken::new();
            runtime.spawn(Arc::clone(&outbox).run(stop));
            outbox
        });
        Self::new(
            addr,
            PoolOptions {
                connect_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_secs(30),
            },
            outbox,
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
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(PoolError::Connect)?;
        let _ = socket.set_nodelay(true);
        let stream = tokio::time::timeout(timeout, socket.connect(self.addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout(timeout))?
            .map_err(PoolError::Connect)?;
        // The head it sends first was written before it was made, and becomes its buffer.
        let (reader, writer) = stream.into_split();
        Ok(Conn {
            reader,
            writer: Arc::new(writer),
            buf: Vec::with_capacity(READ_SIZE),
            out: Vec::new(),
            out_id: 0,
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

/// Writes `request`'s head with the `attempt`'s lines into `out`, unless `out` holds it
/// already (`out_id` says which it holds).
fn prepare(
    out: &mut Vec<u8>,
    out_id: &mut u64,
    request: &Outgoing<'_>,
    attempt: Option<&dyn AttemptFields>,
) {
    let reusable = attempt.is_none() && request.id != 0;
    if !reusable || *out_id != request.id {
        http1::write_head(out, request, attempt);
        *out_id = if reusable { request.id } else { 0 };
    }
}

// === impl Exchange ===

impl Exchange {
    /// The answer `answer` on `conn`, its body not read yet.
    fn new(conn: Conn, answer: Answer) -> Self {
        Self {
            conn,
            head: answer.head,
            status: answer.status,
            body: answer.range.end..answer.range.end,
            head_range: answer.range,
            reusable: false,
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// How long the server asked to be left alone (`Retry-After`), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.head.retry_after
    }

    /// Reads the body, failing past `limit` bytes (decoded, for a chunked body).
    pub async fn read_body(&mut self, limit: usize) -> Result<(), PoolError> {
        let start = self.head_range.end;
        let conn = &mut self.conn;
        let read = match self.head.framing {
            Framing::Length(length) => conn.read_length(start, length, limit).await,
            Framing::Chunked => conn.read_chunked(start, limit).await,
            Framing::UntilClose => conn.read_to_close(start, limit).await,
        };
        let (end, clean) = read.map_err(|failed| failed.error)?;
        self.body = start..end;
        self.reusable = clean && self.head.keep_alive;
        Ok(())
    }

    /// The answer's final head (status line and header lines), as it arrived.
    pub fn head(&self) -> &[u8] {
        &self.conn.buf[self.head_range.clone()]
    }

    /// The answer's body, decoded from chunks when it was chunked; empty until it was read.
    pub fn body(&self) -> &[u8] {
        &self.conn.buf[self.body.clone()]
    }
}

// === impl Conn ===

impl Conn {
    /// False when the server has closed the connection, or sent something unasked for, while
    /// it was idle. Costs no system call unless the socket was seen readable.
    fn is_open(&self) -> bool {
        match self
            .reader
            .as_ref()
            .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: bytes or a close arrived, or the readiness is left over from the last
            // answer's read. Only an empty read says it is still open.
            Poll::Ready(Ok(())) => matches!(
                self.reader.try_read(&mut [0u8; 1]),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Writes the head in `out` and the body, or queues them in `outbox` when the request may
    /// be sent twice and is short (and the outbox's writer runs), and reads the answer's head.
    async fn exchange(
        &mut self,
        sending: Sending<'_>,
        outbox: Option<&Outbox>,
    ) -> Result<Answer, Failed> {
        let short = self.out.len() + sending.body.len() <= outbox::MAX_QUEUED;
        let queued = sending.replayable
            && short
            && outbox.is_some_and(|outbox| outbox.push(&self.writer, &self.out, sending.body));
        if !queued {
            self.write(sending.body).await?;
        }
        let (head, range) = self.read_head(sending.head_only).await?;
        let status =
            StatusCode::from_u16(head.status).map_err(|_| WireError::Head("bad status line"))?;
        Ok(Answer {
            head,
            status,
            range,
        })
    }

    /// Writes the head in `out` and then `body`, in one system call when the socket takes it
    /// all. A failure says whether any byte had left.
    async fn write(&mut self, body: &[u8]) -> Result<(), Failed> {
        let head = self.out.len();
        let total = head + body.len();
        let mut written = 0;
        while written < total {
            let (writer, out) = (&*self.writer, &self.out);
            // The slices are made at each poll: the future holds no room for them.
            let wrote = std::future::poll_fn(|cx| {
                loop {
                    ready!(writer.as_ref().poll_write_ready(cx))?;
                    let wrote = if written >= head {
                        writer.try_write(&body[written - head..])
                    } else if body.is_empty() {
                        writer.try_write(&out[written..])
                    } else {
                        let parts = [IoSlice::new(&out[written..]), IoSlice::new(body)];
                        writer.try_write_vectored(&parts)
                    };
                    match wrote {
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                        wrote => return Poll::Ready(wrote),
                    }
                }
            })
            .await;
            match wrote {
                Ok(0) => return Err(write_failed(std::io::ErrorKind::WriteZero.into(), written)),
                Ok(wrote) => written += wrote,
                Err(err) => return Err(write_failed(err, written)),
            }
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer; 0 at the end of the stream.
    async fn read(&mut self) -> Result<usize, Failed> {
        self.buf.reserve(READ_SIZE);
        let silent = self.buf.is_empty();
        let failed = |error| Failed {
            error,
            silent,
            sent: true,
        };
        match self.reader.read_buf(&mut self.buf).await {
            Ok(0) => Err(failed(PoolError::Closed)),
            Ok(read) => Ok(read),
            Err(err) => Err(failed(PoolError::Io(err))),
        }
    }

    /// Reads the answer's final head, after any interim (1xx) answers, into a fresh buffer.
    /// Every head byte counts toward [`MAX_HEAD_BYTES`], interim heads included, whatever the
    /// reads' sizes: a head one byte longer is refused.
    async fn read_head(&mut self, head_only: bool) -> Result<(Head, Range<usize>), Failed> {
        self.buf.clear();
        // Nothing to parse before the first read.
        self.read().await?;
        let mut start = 0;
        loop {
            match http1::parse_head(&self.buf[start..], head_only)? {
                Parsed::Complete(head, len) if start + len <= MAX_HEAD_BYTES => {
                    return Ok((head, start..start + len));
                }
                Parsed::Interim(len) if start + len <= MAX_HEAD_BYTES => start += len,
                // Every byte read so far is head: at the bound, the head is longer.
                Parsed::Partial if self.buf.len() < MAX_HEAD_BYTES => {
                    self.read().await?;
                }
                _ => return Err(WireError::HeadTooLarge(MAX_HEAD_BYTES).into()),
            }
        }
    }

    /// Reads a body of `length` bytes from `start`; returns its end, and whether nothing
    /// followed it (bytes beyond an answer were not asked for: the connection is not trusted
    /// again).
    async fn read_length(
        &mut self,
        start: usize,
        length: u64,
        limit: usize,
    ) -> Result<(usize, bool), Failed> {
        let end = usize::try_from(length)
            .ok()
            .filter(|&length| length <= limit)
            .ok_or(WireError::TooLarge(limit))?
            + start;
        while self.buf.len() < end {
            self.read().await?;
        }
        Ok((end, self.buf.len() == end))
    }

    /// Reads a chunked body from `start`, joining its chunks in place; returns its end, and
    /// whether nothing followed it.
    async fn read_chunked(&mut self, start: usize, limit: usize) -> Result<(usize, bool), Failed> {
        let mut decoder = Dechunker::new(limit);
        let (mut raw, mut out) = (start, start);
        loop {
            let progress = decoder.decode(&mut self.buf, raw, out)?;
            raw += progress.consumed;
            out = progress.body_end;
            if progress.done {
                return Ok((out, self.buf.len() == raw));
            }
            self.read().await?;
        }
    }

    /// Reads a body that ends when the server closes the connection; the connection is not
    /// reused.
    async fn read_to_close(&mut self, start: usize, limit: usize) -> Result<(usize, bool), Failed> {
        loop {
            if self.buf.len() - start > limit {
                return Err(WireError::TooLarge(limit).into());
            }
            match self.read().await {
                Ok(_) => {}
                Err(Failed {
                    error: PoolError::Closed,
                    ..
                }) => return Ok((self.buf.len(), false)),
                Err(failed) => return Err(failed),
            }
        }
    }
}

/// A write that failed after `written` bytes had left.
fn write_failed(error: std::io::Error, written: usize) -> Failed {
    Failed {
        error: if written == 0 {
            PoolError::NotSent(error)
        } else {
            PoolError::Io(error)
        },
        silent: true,
        sent: written > 0,
    }
}

#[cfg(test)]
mod conformance;
