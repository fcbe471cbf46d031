//! Failures say why: each attempt's cause (a refused connection, a malformed answer, the
//! decoder's error) is in the call error's `source` chain and its one-line `chain()`, bounded
//! and with nothing of the upstream's bytes relayed raw; the bound on an answer's head is
//! exact, whatever the sizes of the reads.

use std::error::Error as _;
use std::time::Duration;

use upstream::Request;

use crate::helpers::{Act, Raw, fixed, local, metric, ok};

const CONNECT_ERRORS: &str = "upstream_attempts_total{outcome=\"connect_error\"}";
const BAD_RESPONSES: &str = "upstream_attempts_total{outcome=\"bad_response\"}";

#[tokio::test]
async fn a_refused_connection_is_in_the_chain() {
    let listener = local();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (upstream, registry) = fixed(addr, |_| {});

    let err = upstream
        .send(&Request::get("/").unwrap())
        .await
        .unwrap_err();

    assert_eq!(err.kind(), "all_attempts_failed");
    // Counted as a connection error, not as a bad answer.
    assert!(metric(&registry, CONNECT_ERRORS) >= 1.0);
    assert_eq!(metric(&registry, BAD_RESPONSES), 0.0);
    let chain = err.chain();
    assert!(
        chain.contains(&format!(
            "{addr}: request failed: cannot connect: Connection refused"
        )),
        "{chain}"
    );
    // The same causes, one `source` after another.
    let mut depth = 0;
    let mut cause = err.source();
    while let Some(next) = cause {
        depth += 1;
        cause = next.source();
    }
    assert!(depth >= 3, "{chain}");
}

#[tokio::test]
async fn a_bad_content_length_is_in_the_chain() {
    let raw = Raw::start(local(), |_| {
        Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n{}".to_vec())
    });
    let (upstream, registry) = fixed(raw.addr, |_| {});

    let err = upstream
        .send(&Request::get("/").unwrap())
        .await
        .unwrap_err();

    let chain = err.chain();
    assert!(
        chain.ends_with("request failed: malformed answer head: bad Content-Length"),
        "{chain}"
    );
    // The server was reached: a bad answer, not a connection error.
    assert!(metric(&registry, BAD_RESPONSES) >= 1.0);
    assert_eq!(metric(&registry, CONNECT_ERRORS), 0.0);
}

#[tokio::test]
async fn a_decoders_error_is_in_the_chain_bounded_and_escaped() {
    let raw = Raw::start(local(), |_| Act::Answer(ok("\u{1b}[2J")));
    let (upstream, _registry) = fixed(raw.addr, |_| {});

    let err = upstream
        .call(&Request::get("/").unwrap(), |answer| {
            let text = String::from_utf8_lossy(answer.body());
            Err::<(), _>(format!("unexpected {text}{}", "!".repeat(5000)))
        })
        .await
        .unwrap_err();

    let chain = err.chain();
    assert!(
        chain.contains("bad answer: unexpected \\u{1b}[2J!!!"),
        "{chain}"
    );
    assert!(!chain.contains('\u{1b}'));
    assert!(
        chain.len() <= 1030 && chain.ends_with("..."),
        "{}",
        chain.len()
    );
}

/// An answer whose head (status line, one padding header, the empty line) is `size` bytes.
fn head_of(size: usize) -> Vec<u8> {
    let fixed = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: \r\n\r\n".len();
    let pad = "p".repeat(size - fixed);
    format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: {pad}\r\n\r\nok").into_bytes()
}

#[tokio::test]
async fn a_head_that_does_not_end_within_the_bound_is_refused_without_waiting() {
    const BOUND: usize = 64 * 1024;
    // Exactly the bound, with no end of head, and the connection left open: the client must
    // stop at the bound, not read on until its deadline.
    let mut head = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
    head.resize(BOUND, b'a');
    let raw = Raw::start(local(), move |_| Act::Answer(head.clone()));
    let (upstream, _registry) = fixed(raw.addr, |options| {
        options.retry.attempt_timeout = Duration::from_secs(30);
        options.retry.request_timeout = Duration::from_secs(30);
    });

    let err = tokio::time::timeout(
        Duration::from_secs(20),
        upstream.send(&Request::get("/").unwrap()),
    )
    .await
    .expect("the client waited on a head past its bound")
    .unwrap_err();

    let chain = err.chain();
    assert!(
        chain.ends_with("answer head larger than 65536 bytes"),
        "{chain}"
    );
}

#[tokio::test]
async fn the_head_bound_is_exact_whatever_the_reads() {
    const BOUND: usize = 64 * 1024;
    for piece in [usize::MAX, 4096, 1000, BOUND - 100] {
        let raw = Raw::start(local(), move |seen| {
            let size = if seen.target == "/at" {
                BOUND
            } else {
                BOUND + 1
            };
            Act::Pieces(head_of(size), piece)
        });
        // The head comes in pieces a millisecond apart: on a loaded machine that can take
        // longer than the default attempt timeout, which is not what this test is about.
        let (upstream, _registry) = fixed(raw.addr, |options| {
            options.max_answer_bytes = 10;
            options.retry.attempt_timeout = Duration::from_secs(30);
            options.retry.request_timeout = Duration::from_secs(30);
        });

        let at = upstream.send(&Request::get("/at").unwrap()).await;
        let over = upstream.send(&Request::get("/over").unwrap()).await;

        assert_eq!(
            at.unwrap().answer.body().as_ref(),
            b"ok",
            "pieces of {piece}"
        );
        let chain = over.unwrap_err().chain();
        assert!(
            chain.ends_with("answer head larger than 65536 bytes"),
            "pieces of {piece}: {chain}"
        );
    }
}
