//! hello against instances that speak HTTP/1.1 in the shapes the protocol allows, and some it
//! does not, over raw sockets: chunks in pieces with an interim answer and trailers, answers
//! that end their connection (said, unsaid, or by closing on the next request), bytes beyond
//! an answer, and an instance that does not speak HTTP at all.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use upstream::RecordKind;

use crate::helpers::{Cluster, Running, SERVICE, eventually};

const JSON: &str = r#"{"name":"Ann","instance":"raw"}"#;

/// How a raw instance treats a connection after an answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Keeps it open for the next request.
    KeepOpen,
    /// Closes it.
    Close,
    /// Reads the next request and closes without answering it: the race of a server closing
    /// an idle connection just as a request arrives, made certain.
    CloseOnNext,
}

/// A raw instance: answers every request with `answer`, written in pieces of `piece` bytes a
/// millisecond apart, then does as `after` says. Returns the connections it accepted.
async fn raw(answer: Vec<u8>, piece: usize, after: After) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let answer: Arc<[u8]> = answer.into();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut answered = 0;
                while read_request(&mut stream).await {
                    if after == After::CloseOnNext && answered == 1 {
                        return;
                    }
                    for part in answer.chunks(piece) {
                        if stream.write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    answered += 1;
                    if after == After::Close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Reads one request head (hello's requests have no body); false at the end of the stream.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// hello calling the raw instance at `addr` alone.
async fn hello_for(addr: SocketAddr) -> Running {
    Cluster::new(0).url(&format!("http://{addr}")).start().await
}

fn length_framed(extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{JSON}",
        JSON.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn chunks_in_pieces_after_an_interim_answer_are_joined_and_the_connection_kept() {
    let mut answer =
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in JSON.as_bytes().chunks(5) {
        answer.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
        answer.extend_from_slice(chunk);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\nx-checksum: none\r\n\r\n");
    let (addr, accepted) = raw(answer, 7, After::KeepOpen).await;
    let cluster = hello_for(addr).await;

    let tally = cluster.hello.tally(20).await;

    assert_eq!(tally["raw"], 20);
    // The probe's connection, and one for the twenty calls.
    let accepted = accepted.load(Ordering::Relaxed);
    assert!(
        accepted <= 3,
        "{accepted} connections for 20 sequential calls"
    );
}

#[tokio::test]
async fn answers_that_end_their_connection_cost_no_failed_request() {
    let close_said = length_framed("connection: close\r\n");
    let http10_until_close =
        format!("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{JSON}").into_bytes();
    let unsaid = length_framed("");
    for (what, answer, after) in [
        ("Connection: close", close_said, After::Close),
        (
            "HTTP/1.0, body to the close",
            http10_until_close,
            After::Close,
        ),
        ("closed without saying", unsaid.clone(), After::Close),
        ("closed on the next request", unsaid, After::CloseOnNext),
    ] {
        let (addr, accepted) = raw(answer, 4096, after).await;
        let cluster = hello_for(addr).await;

        // With one instance a failed attempt has nowhere else to go: every request answering
        // means no attempt failed.
        let tally = cluster.hello.tally(20).await;

        assert_eq!(tally["raw"], 20, "{what}");
        let accepted = accepted.load(Ordering::Relaxed);
        assert!(accepted >= 20, "{what}: {accepted} connections");
    }
}

#[tokio::test]
async fn bytes_beyond_an_answer_retire_its_connection() {
    let mut answer = length_framed("");
    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
    let (addr, accepted) = raw(answer, 4096, After::KeepOpen).await;
    let cluster = hello_for(addr).await;

    let tally = cluster.hello.tally(10).await;

    assert_eq!(tally["raw"], 10);
    // Never read as the next answer: each call had a connection of its own.
    let accepted = accepted.load(Ordering::Relaxed);
    assert!(accepted >= 10, "{accepted} connections");
}

#[tokio::test]
async fn an_instance_that_does_not_speak_http_fails_its_attempts_and_is_ejected() {
    let (good, _) = raw(length_framed(""), 4096, After::KeepOpen).await;
    let (garbage, _) = raw(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), 4096, After::KeepOpen).await;
    // Two ports on one address: SRV records tell them apart.
    let cluster = Cluster::new(0)
        .url("http://name.internal:1")
        .records(move |dns| {
            dns.set_srv(
                SERVICE,
                &[
                    (good.port(), "good.name.internal."),
                    (garbage.port(), "garbage.name.internal."),
                ],
            );
            dns.set_a("good.name.internal.", &[Ipv4Addr::LOCALHOST]);
            dns.set_a("garbage.name.internal.", &[Ipv4Addr::LOCALHOST]);
        })
        .configure(|config| config.upstream.discovery_record = RecordKind::Srv)
        .unready()
        .start()
        .await;
    assert!(cluster.hello.wait_ready(Duration::from_secs(5)).await);

    let tally = cluster.hello.tally(30).await;

    assert_eq!(tally["raw"], 30);
    assert!(
        eventually(Duration::from_secs(5), || async {
            cluster.hello.metric("hello_endpoint_ejections_total").await >= 1
        })
        .await
    );
}
