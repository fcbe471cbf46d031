//! Requests that leave together: a short request that may be sent twice is queued here and
//! written by one task after the runtime's other ready tasks have queued theirs, instead of at
//! once from its caller's task.
//!
//! A runtime polls the tasks an event woke one after another, and each reads its caller's
//! request and writes its own upstream's at once; so a server that sleeps between requests is
//! woken by the first write and finds one request, then the next, each wake-up taking the CPU
//! from the proxy. Queued here, one turn's requests go out in one burst and the server finds
//! them together, as an event loop that reads every ready socket before it writes sends
//! them. The cost is one wake-up of the writing task per burst, not per request.
//!
//! Only requests that may be sent twice ([`super::http1::Outgoing::replayable`]) wait here:
//! a write that fails here closes the connection, and the caller, reading its answer, finds
//! it closed with nothing said and sends the request again on another one.
//!
//! Only a current-thread runtime gets one ([`Outbox::for_runtime`]): it runs tasks in the
//! order they were woken, so the writer, woken by the first request, runs after the others. A
//! multi-thread runtime runs the task a task wakes next (its LIFO slot): the writer would
//! write each request alone, one task wake-up dearer; waiting a turn there costs a poll of the
//! driver per request when the runtime is quiet (3,100 more instructions per sequential
//! request in `scripts/bench --hello-workers 2`).

use std::future::poll_fn;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest request (head and body) that waits for the others: longer ones are written at
/// once by their caller.
pub const MAX_QUEUED: usize = 1024;
/// Queue buffers that grew past this after a burst are made anew.
const KEEP_BYTES: usize = 64 * 1024;

/// Requests waiting to be written, and the task that writes them.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// The writing task, when it waits.
    writer: AtomicWaker,
    /// Set when requests were queued and the writing task was told.
    scheduled: AtomicBool,
}

/// One burst: the requests' bytes end to end, and which connection each range goes to.
#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    writes: Vec<(Arc<OwnedWriteHalf>, Range<usize>)>,
    /// Set when the writer stopped: nothing more is queued.
    closed: bool,
}

impl Outbox {
    /// An empty outbox; [`Outbox::run`] writes what is queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// An outbox, its writer spawned in `tasks` until `stop`, when the current runtime is a
    /// current-thread one; none otherwise.
    pub fn for_runtime(tasks: &mut JoinSet<()>, stop: &CancellationToken) -> Option<Arc<Self>> {
        if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let outbox = Arc::new(Self::new());
        tasks.spawn(Arc::clone(&outbox).run(stop.clone()));
        Some(outbox)
    }

    /// Queues `head` and then `body` (together at most [`MAX_QUEUED`] bytes) for `socket`;
    /// false, with nothing queued, once the writer has stopped: the caller writes them.
    #[must_use]
    pub fn push(&self, socket: &Arc<OwnedWriteHalf>, head: &[u8], body: &[u8]) -> bool {
        {
            let mut queue = self.queue();
            if queue.closed {
                return false;
            }
            let start = queue.bytes.len();
            queue.bytes.extend_from_slice(head);
            queue.bytes.extend_from_slice(body);
            let end = queue.bytes.len();
            queue.writes.push((Arc::clone(socket), start..end));
        }
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.writer.wake();
        }
        true
    }

    /// Writes each burst of queued requests until `stop`; then the last, and takes no more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut burst = Queue::default();
        let bursts = async {
            loop {
                self.queued().await;
                self.scheduled.store(false, Ordering::Release);
                self.queue().hand_over(&mut burst);
                burst.write();
            }
        };
        stop.run_until_cancelled(bursts).await;
        let mut queue = self.queue();
        queue.closed = true;
        queue.hand_over(&mut burst);
        drop(queue);
        burst.write();
    }

    /// Waits until requests were queued.
    async fn queued(&self) {
        poll_fn(|cx| {
            self.writer.register(cx.waker());
            if self.scheduled.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Consistent after every push and swap: a poisoned lock still holds good data.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Queue {
    /// Gives what is queued to `burst`, which must be empty, and takes its buffers.
    fn hand_over(&mut self, burst: &mut Queue) {
        std::mem::swap(&mut self.bytes, &mut burst.bytes);
        std::mem::swap(&mut self.writes, &mut burst.writes);
    }

    /// Writes every request, and empties the queue. A request that did not leave whole closes
    /// its connection: its caller, reading the answer, finds it closed.
    fn write(&mut self) {
        for (socket, range) in self.writes.drain(..) {
            let bytes = &self.bytes[range];
            if !matches!(socket.try_write(bytes), Ok(wrote) if wrote == bytes.len()) {
                let stream: &TcpStream = (*socket).as_ref();
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            }
        }
        self.bytes.clear();
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes = Vec::new();
            self.writes = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair: the client's write half (shared) and read half, and the server's end.
    async fn pair(
        listener: &TcpListener,
    ) -> (
        Arc<OwnedWriteHalf>,
        tokio::net::tcp::OwnedReadHalf,
        TcpStream,
    ) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = client.into_split();
        (Arc::new(write), read, server)
    }

    #[tokio::test]
    async fn queued_requests_leave_together_in_the_next_turn() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut tasks, stop) = (JoinSet::new(), CancellationToken::new());
        let outbox = Outbox::for_runtime(&mut tasks, &stop).expect("a current-thread runtime");
        let mut sockets = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (socket, read, server) = pair(&listener).await;
            sockets.push((socket, read));
            servers.push(server.into_std().unwrap());
        }
        for (i, (socket, _)) in sockets.iter().enumerate() {
            assert!(outbox.push(socket, format!("head {i};").as_bytes(), b"body"));
        }
        // Nothing leaves while the queueing task runs; all of it in the runtime's next turn.
        let mut got = [0u8; 64];
        for server in &servers {
            let err = server.peek(&mut got).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        }
        tokio::task::yield_now().await;
        for (i, server) in servers.iter_mut().enumerate() {
            let read = std::io::Read::read(server, &mut got).unwrap();
            assert_eq!(&got[..read], format!("head {i};body").as_bytes());
        }
        assert!(outbox.queue().writes.is_empty());
        stop.cancel();
        tasks.join_next().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_request_that_cannot_leave_closes_its_connection_for_the_reader() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbox = Arc::new(Outbox::new());
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&outbox).run(stop.clone()));
        let (socket, mut read, _server) = pair(&listener).await;
        // The write side already shut: the queued write fails.
        let stream: &TcpStream = (*socket).as_ref();
        socket2::SockRef::from(stream)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        assert!(outbox.push(&socket, b"GET / HTTP/1.1\r\n\r\n", b""));
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
            .await
            .expect("the reader is not left waiting");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runtime_of_several_threads_gets_none_and_the_writer_still_works_there() {
        let (mut tasks, stop) = (JoinSet::new(), CancellationToken::new());
        assert!(Outbox::for_runtime(&mut tasks, &stop).is_none());
        assert!(tasks.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbox = Arc::new(Outbox::new());
        let stop = CancellationToken::new();
        let writer = tokio::spawn(Arc::clone(&outbox).run(stop.clone()));
        let (socket, _read, mut server) = pair(&listener).await;
        for round in 0..20u8 {
            assert!(outbox.push(&socket, &[round], b""));
            let mut got = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
                .await
                .expect("each request leaves")
                .unwrap();
            assert_eq!(got, [round]);
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops")
            .unwrap();
    }

    #[tokio::test]
    async fn what_was_queued_when_the_writer_stopped_leaves_and_nothing_more_is_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut tasks, stop) = (JoinSet::new(), CancellationToken::new());
        let outbox = Outbox::for_runtime(&mut tasks, &stop).expect("a current-thread runtime");
        let (socket, _read, mut server) = pair(&listener).await;
        assert!(outbox.push(&socket, b"last", b""));
        stop.cancel();
        tasks.join_next().await.unwrap().unwrap();

        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"last");
        // The caller is told to write it itself.
        assert!(!outbox.push(&socket, b"late", b""));
        assert!(outbox.queue().writes.is_empty());
    }
}
