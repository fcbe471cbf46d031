//! The codec's property test: generated answers ([`answers`]) sent over a loopback socket in
//! arbitrary writes and read by a [`Pool`] (head, body to a bound, the reuse decision), against
//! hyper's HTTP/1.1 client reading the same bytes over an in-memory stream, and against the
//! model of RFC 9112 in [`answers::Case::expect`]. The pool and the model agree on every case:
//! the same status and body, or both refuse, and the connection is reused only when the model
//! allows it and nothing followed the answer. hyper agrees too, except where
//! [`answers::Case::reference_differs`] says why not. A failing case is printed shrunk.
//!
//! Cases per run: [`CASES`], or `PROPTEST_CASES` from the environment.

mod answers;

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use self::answers::{Case, Expect, Wire};
use super::Pool;
use crate::transport::http1::{MAX_HEAD_BYTES, Outgoing, visit_fields};

/// Cases in one run: about five seconds on an idle two-core machine, in a debug build.
const CASES: u32 = 4000;
/// Longest a case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a client read of an answer: status, header fields (lower-case names, sorted), body.
#[derive(Clone, PartialEq, Eq)]
struct Read {
    status: u16,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Read {
    /// Fields and body escaped, and cut short: a generated head may be 64 KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |bytes: &[u8]| {
            let text = bytes.escape_ascii().to_string();
            match text.len() > 80 {
                true => format!("{}... ({} bytes)", &text[..80], bytes.len()),
                false => text,
            }
        };
        let fields: Vec<_> = self
            .fields
            .iter()
            .map(|(name, value)| format!("{name}: {}", short(value)))
            .collect();
        f.debug_struct("Read")
            .field("status", &self.status)
            .field("fields", &fields)
            .field("body", &short(&self.body))
            .finish()
    }
}

/// What the pool made of an answer.
#[derive(Debug)]
struct PoolRead {
    read: Read,
    /// The exchange said the connection may be reused.
    reusable: bool,
    /// Idle connections after the exchange was released and the pool swept, once whatever
    /// the server sent after the answer (or its close) had arrived.
    idle: usize,
}

#[test]
fn the_pool_reads_generated_answers_as_the_model_and_hyper_do() {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config);
    let tally: [Cell<u32>; 4] = Default::default();
    let result = runner.run(&answers::case(), |case| {
        let seen = runtime.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, check(&case))
                .await
                .map_err(|_| TestCaseError::fail("the case hung"))?
        })?;
        let counts = [true, seen.refused, seen.kept, seen.compared];
        for (count, seen) in tally.iter().zip(counts) {
            count.set(count.get() + u32::from(seen));
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let [cases, refused, kept, compared] = tally.map(Cell::into_inner);
    println!(
        "{cases} cases: {refused} refused, {kept} left the connection idle for another \
         request; {compared} compared with hyper as well"
    );
}

/// What one case came to.
struct Seen {
    refused: bool,
    kept: bool,
    compared: bool,
}

/// Reads `case` both ways and checks the reads against the model and each other.
async fn check(case: &Case) -> Result<Seen, TestCaseError> {
    let wire = case.wire();
    let expect = case.expect(&wire);
    let ours = through_pool(case, &wire).await;
    let theirs = through_hyper(case, &wire).await;
    match (&expect, &ours) {
        (Expect::Refuse, Err(_)) => {}
        (Expect::Answer { status, body, .. }, Ok(ours)) => {
            prop_assert_eq!(*status, ours.read.status);
            prop_assert!(body == &ours.read.body, "model {expect:?}, pool {ours:?}");
        }
        _ => prop_assert!(false, "model {expect:?}, pool {ours:?}"),
    }
    let compared = case.reference_differs().is_none();
    if compared {
        let ours = ours.as_ref().map(|ours| &ours.read).ok();
        prop_assert_eq!(
            ours,
            theirs.as_ref().ok(),
            "pool against hyper: {:?}",
            theirs
        );
    }
    if let (Expect::Answer { reusable, .. }, Ok(ours)) = (&expect, &ours) {
        let clean = *reusable && wire.bytes.len() == wire.answer_end;
        // Bytes after the answer may arrive after it was read: the exchange cannot have seen
        // them, the pool's check of an idle connection does.
        prop_assert!(!ours.reusable || *reusable, "reused against the model");
        prop_assert!(
            ours.reusable || !clean,
            "not reused, though the model allows it"
        );
        let kept = usize::from(clean && !wire.closes);
        prop_assert_eq!(ours.idle, kept, "idle connections after the answer");
    }
    Ok(Seen {
        refused: ours.is_err(),
        kept: ours.as_ref().is_ok_and(|ours| ours.idle > 0),
        compared,
    })
}

/// Serves `wire` on a loopback socket and reads it through a pool.
async fn through_pool(case: &Case, wire: &Wire) -> Result<PoolRead, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pool = Pool::for_tests(listener.local_addr().unwrap());
    let pieces: Vec<Vec<u8>> = case
        .pieces(&wire.bytes)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let closes = wire.closes;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        read_request(&mut stream).await;
        for piece in &pieces {
            if stream.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if !closes {
            // Open until the client closes.
            while stream.read(&mut [0; 512]).await.is_ok_and(|read| read > 0) {}
        }
    });
    let request = Outgoing {
        id: 0,
        line: if wire.head_only {
            b"HEAD / HTTP/1.1\r\n"
        } else {
            b"GET / HTTP/1.1\r\n"
        },
        fields: [b"host: conformance\r\n", b"", b""],
        body: b"",
        always_length: false,
        head_only: wire.head_only,
        replayable: true,
    };
    let read = read_through(&pool, &request, wire).await;
    drop(pool);
    server.await.unwrap();
    read
}

/// Sends `request` through `pool`, reads the answer to the bound, releases the connection
/// and sweeps the pool.
async fn read_through(
    pool: &Pool,
    request: &Outgoing<'_>,
    wire: &Wire,
) -> Result<PoolRead, String> {
    let mut exchange = pool
        .send(request, None, Instant::now())
        .await
        .map_err(|e| e.to_string())?;
    exchange
        .read_body(wire.limit)
        .await
        .map_err(|e| e.to_string())?;
    let read = Read {
        status: exchange.status().as_u16(),
        fields: pool_fields(exchange.head()),
        body: exchange.body().to_vec(),
    };
    let reusable = exchange.reusable;
    if reusable && (wire.closes || wire.bytes.len() > wire.answer_end) {
        // Wait for what follows (or the close) to reach the socket.
        exchange.conn.reader.readable().await.unwrap();
    }
    pool.release(exchange, 1, Instant::now());
    pool.sweep(Instant::now());
    Ok(PoolRead {
        read,
        reusable,
        idle: pool.idle_count(),
    })
}

fn pool_fields(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut fields = Vec::new();
    visit_fields(head, |name, value| {
        fields.push((name.to_ascii_lowercase(), value.to_vec()));
        ControlFlow::Continue(())
    });
    fields.sort();
    fields
}

/// Serves `wire` over an in-memory stream to hyper's HTTP/1.1 client; its read, or why it
/// refused. A body over the bound counts as refused: hyper has no bound of its own.
async fn through_hyper(case: &Case, wire: &Wire) -> Result<Read, String> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // The codec's bound on a head (hyper's default is larger).
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
        .await
        .map_err(|e| e.to_string())?;
    // The connection's own error after the answer (bytes nobody asked for) is not the answer's.
    let conn = tokio::spawn(conn);
    let feed = async {
        read_request(&mut server).await;
        for piece in case.pieces(&wire.bytes) {
            if server.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if wire.closes {
            let _ = server.shutdown().await;
        }
    };
    let method = if wire.head_only {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let request = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "conformance");
    let ask = async {
        let response = sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let mut fields: Vec<_> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        fields.sort();
        Ok::<_, String>(Read {
            status: parts.status.as_u16(),
            fields,
            body: body.to_vec(),
        })
    };
    let ((), read) = tokio::join!(feed, ask);
    conn.abort();
    read.and_then(|read| match read.body.len() > wire.limit {
        true => Err("over the bound".to_owned()),
        false => Ok(read),
    })
}

/// Reads a request head (no body) off `stream`, so that the answer follows it.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(_) => return,
        }
    }
}
