//! hello at `MAX_CONNECTIONS`, over sockets: a table full of silent or idle connections makes
//! room for new ones, oldest first, and a connection in the middle of a request is never the
//! one closed; a connection that sends nothing is closed `HEADER_READ_TIMEOUT` after it was
//! accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::helpers::{Cluster, Hello, eventually, hello_config, ms};

/// hello's default `MAX_CONNECTIONS`.
const MAX: usize = 1024;
/// Connections a hostile client holds open: more than the limit.
const FLOOD: usize = 1100;
/// Requests of the real client, one every 50 ms (20 a second for 3 s).
const REQUESTS: usize = 60;

/// Raises this process's soft limit of open files to `needed` (within the hard limit), for a
/// test that holds both ends of its connections: about 2,300 with a flood of 1,100 (a CI
/// machine's soft limit may be 1,024).
fn raise_open_files(needed: u64) {
    let soft = rlimit::increase_nofile_limit(needed).unwrap();
    assert!(
        soft >= needed,
        "the test needs {needed} open files; the hard limit allows {soft}"
    );
}

/// Connects to `addr` within 10 s. (A listener whose backlog is full leaves `connect`
/// retrying its SYN for minutes.)
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection in 10 s"))?
}

/// Opens `count` connections to `addr` that send nothing.
async fn silent_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let stream = connect(addr).await;
        streams.push(stream.unwrap_or_else(|err| panic!("silent connection {i}: {err}")));
    }
    streams
}

/// Opens `count` keep-alive connections to `addr` that each make one request, read its
/// answer, and then sit idle.
async fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = connect(addr).await.unwrap();
        let status = ask(&mut stream, "/healthz").await;
        assert_eq!(status.ok(), Some(200), "idle connection {i}'s request");
        streams.push(stream);
    }
    streams
}

/// Sends `GET path` on `stream` and reads the whole answer, within 10 s; returns its status.
async fn ask(stream: &mut TcpStream, path: &str) -> std::io::Result<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: hello\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    tokio::time::timeout(Duration::from_secs(10), read_answer(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

/// Reads one answer with a `content-length` from `stream`; returns its status.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1).unwrap_or("0");
                return Ok(status.parse().unwrap_or(0));
            }
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..read]);
    }
}

/// The real client: `REQUESTS` requests for `GET /`, 20 a second, each on a connection of its
/// own that stays open afterwards, as a load balancer opening connections in a burst does.
/// Returns each request's status (0 when it failed) and time, and the connections.
async fn real_client(addr: SocketAddr) -> (Vec<(u16, Duration)>, Vec<TcpStream>) {
    let mut requests = JoinSet::new();
    let mut every = tokio::time::interval(ms(50));
    for _ in 0..REQUESTS {
        every.tick().await;
        requests.spawn(async move {
            let asked = Instant::now();
            let Ok(mut stream) = connect(addr).await else {
                return (0, asked.elapsed(), None);
            };
            let status = ask(&mut stream, "/").await.unwrap_or(0);
            (status, asked.elapsed(), Some(stream))
        });
    }
    let mut answers = Vec::new();
    let mut streams = Vec::new();
    while let Some(done) = requests.join_next().await {
        let (status, took, stream) = done.unwrap();
        answers.push((status, took));
        streams.extend(stream);
    }
    (answers, streams)
}

/// Asserts that every request was answered 200 and that the 99th percentile time is under
/// 1 s.
fn assert_served(answers: &[(u16, Duration)]) {
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    let mut times: Vec<Duration> = answers.iter().map(|(_, took)| *took).collect();
    times.sort();
    let p99 = times[(times.len() * 99).div_ceil(100) - 1];
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}, times {times:?}");
}

#[tokio::test]
async fn past_the_limit_silent_connections_make_room_for_requests() {
    raise_open_files(3000);
    assert_eq!(hello_config().listen.max_connections as usize, MAX);
    // The flood's connections would be closed at the header timeout anyway: a long one keeps
    // the table full for the whole test.
    let cluster = Cluster::new(1)
        .configure(|config| config.listen.header_read_timeout = Duration::from_secs(60))
        .start()
        .await;
    let addr = cluster.hello.addr();

    let _flood = silent_connections(addr, FLOOD).await;
    let (answers, _kept) = real_client(addr).await;

    assert_served(&answers);
    // Each connection past the limit closed one: the flood's excess, then one per request.
    // The helper's own keep-alive connection, idle and the oldest, may have been the first.
    let shed = cluster
        .hello
        .metric("hello_connections_shed_total{state=\"silent\"}")
        .await;
    assert!(shed as usize >= FLOOD - MAX + REQUESTS - 1, "{shed} shed");
    assert!(cluster.hello.metric("hello_connections_open").await as usize <= MAX);
    assert_eq!(
        cluster
            .hello
            .metric("hello_connections_limit_reached_total")
            .await,
        0
    );
}

#[tokio::test]
async fn past_the_limit_idle_keep_alive_connections_make_room_for_requests() {
    raise_open_files(3000);
    let cluster = Cluster::new(1).start().await;
    let addr = cluster.hello.addr();

    let _flood = idle_connections(addr, FLOOD).await;
    let (answers, _kept) = real_client(addr).await;

    assert_served(&answers);
    let shed = cluster
        .hello
        .metric("hello_connections_shed_total{state=\"idle\"}")
        .await;
    assert!(shed as usize >= FLOOD - MAX + REQUESTS, "{shed} shed");
    assert!(cluster.hello.metric("hello_connections_open").await as usize <= MAX);
}

/// An upstream that answers its health checks at once and holds every other request until
/// released; counts the requests that reached it.
struct HeldUpstream {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl HeldUpstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let counter = Arc::clone(&arrived);
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .fallback(move || {
                let counter = Arc::clone(&counter);
                let mut released = released.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|released| *released).await;
                    axum::Json(serde_json::json!({"name": "Ann", "instance": "held"}))
                }
            });
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            arrived,
            release,
        }
    }
}

#[tokio::test]
async fn a_connection_mid_request_is_never_shed() {
    let upstream = HeldUpstream::start().await;
    let mut config = hello_config();
    config.listen.max_connections = 8;
    config.listen.header_read_timeout = Duration::from_secs(30);
    config.upstream.name_service_url = format!("http://{}", upstream.addr).parse().unwrap();
    config.calls.hedge = false;
    config.calls.attempt_timeout = Duration::from_secs(30);
    config.calls.request_timeout = Duration::from_secs(30);
    let hello = Hello::start(config).await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);
    let addr = hello.addr();
    // One connection with half a head, one whose request waits on the upstream.
    let mut half_sent = TcpStream::connect(addr).await.unwrap();
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"GET / HTTP/1.1\r\nhost: hello\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.arrived.load(Ordering::SeqCst) == 1
        })
        .await,
        "the request never reached the upstream"
    );

    // 40 connections through a table of 8: all but the first few shed an older one, and
    // only silent or idle ones are older than the flood's last connections.
    let mut flood = silent_connections(addr, 40).await;
    for (i, stream) in flood[..30].iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert_eq!(
            read.ok().and_then(Result::ok),
            Some(0),
            "flood connection {i} left open"
        );
    }

    half_sent.write_all(b"st: hello\r\n\r\n").await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), read_answer(&mut half_sent))
            .await
            .expect("no answer to the half-sent head")
            .expect("the half-sent head's connection was closed"),
        200
    );
    upstream.release.send_replace(true);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), read_answer(&mut waiting))
            .await
            .expect("no answer to the waiting request")
            .expect("the waiting request's connection was closed"),
        200
    );
    let shed = hello
        .metric("hello_connections_shed_total{state=\"silent\"}")
        .await;
    assert!(shed >= 30, "{shed} shed");
}

/// hello with no upstream to speak of, and these timeouts.
async fn hello_with_timeouts(header_read: Duration, idle: Duration) -> Hello {
    let mut config = hello_config();
    config.listen.header_read_timeout = header_read;
    config.listen.idle_timeout = idle;
    config.upstream.name_service_url = "http://127.0.0.1:9".parse().unwrap();
    Hello::start(config).await
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let hello = hello_with_timeouts(ms(500), Duration::from_secs(60)).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(hello.addr()).await.unwrap();

    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;

    let closed_after = started.elapsed();
    assert_eq!(
        read.expect("silent connection left open").ok(),
        Some(0),
        "hello answered a connection that sent nothing"
    );
    assert!(closed_after >= ms(500), "closed after {closed_after:?}");
    assert_eq!(
        hello.metric("hello_connections_silent_closed_total").await,
        1
    );
}

#[tokio::test]
async fn a_head_begun_in_time_has_the_header_timeout_from_its_first_byte() {
    let hello = hello_with_timeouts(Duration::from_secs(2), Duration::from_secs(60)).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(hello.addr()).await.unwrap();

    // The first byte 1 s after accept, the rest 2.5 s after: past accept + 2 s, within first
    // byte + 2 s.
    tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    stream.write_all(b"G").await.unwrap();
    tokio::time::sleep_until(started + ms(2500)).await;
    stream
        .write_all(b"ET /healthz HTTP/1.1\r\nhost: hello\r\n\r\n")
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream)).await;

    assert_eq!(status.expect("no answer").ok(), Some(200));
    assert_eq!(
        hello.metric("hello_connections_silent_closed_total").await,
        0
    );
}
