//! hello under hostile clients and broken neighbours: every resource bounded. Slow clients
//! are closed, shutdown has a deadline, connections have a cap, an endless answer costs a
//! bounded number of bytes, and a record pointing back at hello is refused, not amplified.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Cluster, Hello, eventually, hello_config, ms};

/// Opens `count` connections to `base` that send a request head one byte at a time, every
/// `every`, from a thread of their own; returns when every connection has been closed by
/// hello or `limit` has passed, with the number closed.
fn slow_clients(
    addr: std::net::SocketAddr,
    count: usize,
    every: Duration,
    limit: Duration,
) -> usize {
    let head = b"GET /healthz HTTP/1.1\r\nHost: hello\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut streams: Vec<Option<TcpStream>> = (0..count)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            Some(stream)
        })
        .collect();
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < limit && streams.iter().any(Option::is_some) {
        for slot in &mut streams {
            let Some(stream) = slot else { continue };
            let mut probe = [0u8; 64];
            let closed = match stream.read(&mut probe) {
                Ok(0) => true,
                Ok(_) => panic!("hello answered a request whose head never completed"),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    stream.write_all(&head[sent % head.len()..][..1]).is_err()
                }
                Err(_) => true,
            };
            if closed {
                *slot = None;
            }
        }
        sent += 1;
        std::thread::sleep(every);
    }
    streams.iter().filter(|slot| slot.is_none()).count()
}

#[tokio::test]
async fn slow_clients_are_closed_once_the_header_timeout_passes() {
    let cluster = Cluster::new(1)
        .configure(|config| config.listen.header_read_timeout = ms(300))
        .start()
        .await;
    let addr = cluster.hello.addr();

    let closed =
        tokio::task::spawn_blocking(move || slow_clients(addr, 20, ms(50), Duration::from_secs(5)))
            .await
            .unwrap();

    assert_eq!(closed, 20, "slow connections left open");
    assert_eq!(
        cluster
            .hello
            .metric("hello_connections_slow_closed_total")
            .await,
        20
    );
    assert!(cluster.hello.greet().await.is_ok(), "hello stopped serving");
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout_and_answers_push_it_back() {
    const IDLE: Duration = Duration::from_secs(1);
    // The header timeout is out of reach: only the idle timeout can close a silent connection.
    let mut config = hello_config();
    config.listen.idle_timeout = IDLE;
    config.listen.header_read_timeout = Duration::from_secs(60);
    config.upstream.name_service_url = "http://127.0.0.1:9".parse().unwrap();
    let hello = Hello::start(config).await;
    let addr = hello.addr();
    let request = b"GET /healthz HTTP/1.1\r\nhost: hello\r\n\r\n";
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let silent = tokio::spawn(async move {
        let mut rest = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut rest)).await;
        (read.map(Result::ok), opened.elapsed())
    });
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();

    // `busy` asks every 50 ms for two and a half idle timeouts: each answer starts its idle
    // time again, so it is never idle for long enough to be closed.
    let mut answer = [0u8; 1024];
    let mut last_sent = opened;
    let mut asked = 0;
    while opened.elapsed() < IDLE * 5 / 2 && asked < 100 {
        last_sent = tokio::time::Instant::now();
        busy.write_all(request).await.unwrap();
        let mut received = Vec::new();
        while !received.ends_with(b"\r\n\r\nok") {
            let read = busy.read(&mut answer).await.unwrap_or(0);
            assert!(
                read > 0,
                "busy connection closed after {asked} answers, {:?} after it opened",
                opened.elapsed()
            );
            received.extend_from_slice(&answer[..read]);
        }
        assert!(received.starts_with(b"HTTP/1.1 200"));
        asked += 1;
        tokio::time::sleep(ms(50)).await;
    }
    let busy_read = tokio::time::timeout(Duration::from_secs(10), busy.read(&mut answer)).await;
    let busy_idle_for = last_sent.elapsed();
    let (silent_read, silent_open_for) = silent.await.unwrap();

    // Closed, and neither before its idle time was up (a lower bound that a slow machine
    // only makes longer; the deadlines above are the upper bound).
    assert_eq!(busy_read.expect("idle connection left open").ok(), Some(0));
    assert!(
        busy_idle_for >= IDLE,
        "closed {busy_idle_for:?} after its last request"
    );
    assert_eq!(silent_read.expect("silent connection left open"), Some(0));
    assert!(
        silent_open_for >= IDLE,
        "silent connection closed after {silent_open_for:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_within_its_deadline_while_slow_clients_hold_connections() {
    let mut config = hello_config();
    config.listen.header_read_timeout = Duration::from_secs(600);
    config.listen.shutdown_timeout = ms(300);
    config.upstream.name_service_url = "http://127.0.0.1:9".parse().unwrap();
    let hello = Hello::start(config).await;
    let addr = hello.addr();
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        held.push(stream);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            hello.metric("hello_connections_open").await >= 10
        })
        .await
    );

    let stopped = tokio::time::timeout(Duration::from_secs(10), hello.stop()).await;

    assert!(
        stopped.is_ok(),
        "hello did not stop while slow clients held connections"
    );
    stopped.unwrap().unwrap();
    let mut rest = [0u8; 16];
    assert_eq!(
        held[0].read(&mut rest).await.unwrap_or(0),
        0,
        "connection left open"
    );
}

#[tokio::test]
async fn at_the_connection_limit_with_every_connection_mid_request_hello_waits_for_one_to_finish() {
    let cluster = Cluster::new(1)
        .configure(|config| config.listen.max_connections = 3)
        .start()
        .await;
    let addr = cluster.hello.addr();
    // Three connections with half a request head each fill the table; the helper's own idle
    // keep-alive connection is shed to admit the third.
    let mut half_sent = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .unwrap();
        half_sent.push(stream);
    }

    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: hello\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    let early = tokio::time::timeout(ms(300), extra.read_exact(&mut answer)).await;
    assert!(early.is_err(), "a connection past the limit was served");

    // The first one finishes its request; once answered it is idle, and shed for `extra`.
    half_sent[0].write_all(b"st: hello\r\n\r\n").await.unwrap();
    half_sent[0].read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    tokio::time::timeout(Duration::from_secs(5), extra.read_exact(&mut answer))
        .await
        .expect("never served after a request finished")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    // The other two were never cut.
    for stream in &mut half_sent[1..] {
        stream.write_all(b"st: hello\r\n\r\n").await.unwrap();
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
    }
    assert!(
        cluster
            .hello
            .metric("hello_connections_limit_reached_total")
            .await
            >= 1
    );
}

#[tokio::test]
async fn a_request_that_came_through_hello_is_refused_with_508() {
    let cluster = Cluster::new(1).start().await;

    let response = cluster
        .hello
        .http
        .get(&cluster.hello.base)
        .header("via", "1.0 cdn, 1.1 hello")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 508);
    assert_eq!(cluster.hello.metric("hello_loops_refused_total").await, 1);
}

#[tokio::test]
async fn a_record_pointing_back_at_hello_is_refused_not_amplified() {
    // hello's own address is its upstream, as when a record or a reused address points back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = hello_config();
    config.upstream.name_service_url = format!("http://{addr}").parse().unwrap();
    let hello = Hello::start_on(config, listener).await;

    let (status, body) = hello.get("/").await;

    assert_eq!(status, 503, "{body}");
    assert!(body.contains("508"), "{body}");
    // One refused call per attempt (and hedge), never a cascade.
    let loops = hello.metric("hello_loops_refused_total").await;
    assert!((1..=3).contains(&loops), "{loops} loops refused");
}
