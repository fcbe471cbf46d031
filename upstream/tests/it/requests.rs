//! Requests of every shape reach the server intact, and answers come back whole: methods,
//! targets, headers and bodies; statuses, headers and bodies; the body bound; `HEAD`; a
//! per-call deadline; and requests refused before anything is sent.

use std::time::Duration;

use serde_json::Value;
use upstream::http::header::{HeaderValue, LOCATION};
use upstream::http::{Method, StatusCode};
use upstream::{Bytes, Options, Request, RequestError, StatusPolicy, TraceContext, Upstream};

use crate::helpers::{Act, Raw, echo, fixed, local, ok};

/// The echo server's account of `request`.
async fn echoed(upstream: &Upstream, request: &Request) -> Value {
    let reply = upstream.send(request).await.unwrap();
    assert_eq!(reply.answer.status(), StatusCode::OK);
    serde_json::from_slice(reply.answer.body()).unwrap()
}

fn header<'a>(echoed: &'a Value, name: &str) -> Vec<&'a str> {
    echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_body_larger_than_one_write_reaches_the_server_whole() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |options| {
        options.max_answer_bytes = 4 << 20;
        options.retry.attempt_timeout = Duration::from_secs(30);
        options.retry.request_timeout = Duration::from_secs(30);
    });
    // Far more than a new loopback connection's send buffer (16 KiB to start): the socket
    // takes the head and the body in several writes, the later ones from within the body.
    let body: String = (0..(1 << 20) - 4096)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let request = Request::new(Method::PUT, "/large")
        .unwrap()
        .with_body(body.clone());

    let echoed = echoed(&upstream, &request).await;

    assert_eq!(echoed["body"].as_str().map(str::len), Some(body.len()));
    assert!(echoed["body"] == body.as_str(), "the body arrived changed");
}

#[tokio::test]
async fn methods_targets_headers_and_bodies_reach_the_server_intact() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});
    let body = "line one\r\nline two\0 and a \u{e9}";
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let request = Request::new(method.clone(), "/items/7?a=1&b=%20c")
            .unwrap()
            .with_header("x-tag", "first")
            .unwrap()
            .with_header("X-Tag", "second")
            .unwrap()
            .with_body(body);

        let echoed = echoed(&upstream, &request).await;

        assert_eq!(echoed["method"], method.as_str());
        assert_eq!(echoed["target"], "/items/7?a=1&b=%20c");
        assert_eq!(echoed["body"], body);
        assert_eq!(header(&echoed, "x-tag"), ["first", "second"]);
        assert_eq!(header(&echoed, "content-length"), [body.len().to_string()]);
        assert_eq!(header(&echoed, "host"), [addr.to_string()]);
    }
    let get = echoed(&upstream, &Request::get("/plain").unwrap()).await;
    assert!(header(&get, "content-length").is_empty(), "{get}");
    let empty_post = echoed(&upstream, &Request::post("/empty", "").unwrap()).await;
    assert_eq!(header(&empty_post, "content-length"), ["0"]);
}

#[tokio::test]
async fn a_host_of_the_callers_replaces_the_address_and_via_goes_along() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |options| options.via = Some("1.1 caller".into()));
    let request = Request::get("/")
        .unwrap()
        .with_header("host", "orders.internal")
        .unwrap();

    let echoed = echoed(&upstream, &request).await;

    assert_eq!(header(&echoed, "host"), ["orders.internal"]);
    assert_eq!(header(&echoed, "via"), ["1.1 caller"]);
}

#[tokio::test]
async fn an_http_request_converts_and_goes_as_it_was_built() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});
    let request = upstream::http::Request::put("/things/1")
        .header("content-type", "text/plain")
        .body(Bytes::from_static(b"thing"))
        .unwrap();

    let echoed = echoed(&upstream, &Request::try_from(request).unwrap()).await;

    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["body"], "thing");
    assert_eq!(header(&echoed, "content-type"), ["text/plain"]);
}

#[tokio::test]
async fn statuses_headers_and_bodies_come_back() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});

    let reply = upstream
        .send(&Request::post("/status/201", "x").unwrap())
        .await
        .unwrap();

    let answer = reply.answer;
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(answer.headers()[LOCATION], "/elsewhere");
    let multi: Vec<&HeaderValue> = answer.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(answer.body().as_ref(), b"status 201");
    assert_eq!((reply.endpoint, reply.attempts), (addr, 1));

    // Decoded in place: headers read only when asked for.
    let reply = upstream
        .call(&Request::get("/status/202").unwrap(), |answer| {
            let location = answer.header("Location").map(<[u8]>::to_vec);
            Ok::<_, std::convert::Infallible>((answer.status(), location, answer.body().len()))
        })
        .await
        .unwrap();
    assert_eq!(
        reply.answer,
        (StatusCode::ACCEPTED, Some(b"/elsewhere".to_vec()), 10)
    );
}

#[tokio::test]
async fn a_client_error_is_the_callers_answer_unless_the_policy_says_otherwise() {
    let addr = echo(local());
    let (upstream, registry) = fixed(addr, |_| {});

    let reply = upstream
        .send(&Request::get("/status/404").unwrap())
        .await
        .unwrap();

    assert_eq!(reply.answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(reply.answer.body().as_ref(), b"status 404");
    assert_eq!(
        crate::helpers::metric(&registry, "upstream_attempts_total{outcome=\"ok\"}"),
        1.0
    );

    let (strict, registry) = fixed(addr, |options| options.answers = StatusPolicy::SuccessOnly);
    let err = strict
        .send(&Request::get("/status/404").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.kind(), "all_attempts_failed");
    assert_eq!(
        crate::helpers::metric(
            &registry,
            "upstream_attempts_total{outcome=\"client_error\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_server_error_fails_the_call_and_the_error_keeps_the_status() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});

    let err = upstream
        .send(&Request::get("/status/502").unwrap())
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(
        err.chain().contains("answered 502 Bad Gateway"),
        "{}",
        err.chain()
    );
}

#[tokio::test]
async fn the_body_bound_is_exact_for_lengths_and_chunks() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |options| options.max_answer_bytes = 1000);

    let full = upstream.send(&Request::get("/bytes/1000").unwrap()).await;
    assert_eq!(full.unwrap().answer.body().len(), 1000);
    let over = upstream
        .send(&Request::get("/bytes/1001").unwrap())
        .await
        .unwrap_err();
    assert!(
        over.chain().contains("answer larger than 1000 bytes"),
        "{}",
        over.chain()
    );

    let chunked = |size: usize| {
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for piece in vec![b'y'; size].chunks(300) {
            answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            answer.extend_from_slice(piece);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    };
    let raw = Raw::start(local(), move |seen| {
        Act::Answer(chunked(seen.target[1..].parse().unwrap()))
    });
    let (upstream, _registry) = fixed(raw.addr, |options| options.max_answer_bytes = 1000);
    let full = upstream.send(&Request::get("/1000").unwrap()).await;
    assert_eq!(full.unwrap().answer.body().as_ref(), vec![b'y'; 1000]);
    let over = upstream
        .send(&Request::get("/1001").unwrap())
        .await
        .unwrap_err();
    assert!(
        over.chain().contains("answer larger than 1000 bytes"),
        "{}",
        over.chain()
    );
}

/// An answer framed by the connection's close (no length, not chunked): read to the bound and
/// no further. One byte over, the attempt fails on the bound itself (not on a length or a
/// decoder), is counted as a bad response and an answer too large, and is not repeated on the
/// one endpoint.
#[tokio::test]
async fn the_body_bound_is_exact_for_an_answer_ending_at_the_close() {
    let raw = Raw::start(local(), |seen| {
        let size: usize = seen.target[1..].parse().unwrap();
        let mut answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
        answer.resize(answer.len() + size, b'z');
        Act::Last(answer)
    });
    let (upstream, registry) = fixed(raw.addr, |options| options.max_answer_bytes = 1000);

    let full = upstream.send(&Request::get("/1000").unwrap()).await;
    assert_eq!(full.unwrap().answer.body().as_ref(), vec![b'z'; 1000]);
    let over = upstream
        .send(&Request::get("/1001").unwrap())
        .await
        .unwrap_err();
    assert_eq!(over.kind(), "all_attempts_failed");
    assert!(
        over.chain().contains("answer larger than 1000 bytes"),
        "{}",
        over.chain()
    );
    let count = |sample: &str| crate::helpers::metric(&registry, sample);
    assert_eq!(count("upstream_answers_too_large_total"), 1.0);
    assert_eq!(
        count("upstream_attempts_total{outcome=\"bad_response\"}"),
        1.0
    );
    assert_eq!(count("upstream_attempts_total{outcome=\"ok\"}"), 1.0);
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_its_connection_serves_the_next_request() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});

    let head = upstream
        .send(&Request::new(Method::HEAD, "/bytes/50").unwrap())
        .await
        .unwrap();
    let next = upstream
        .send(&Request::get("/bytes/5").unwrap())
        .await
        .unwrap();

    assert_eq!(head.answer.status(), StatusCode::OK);
    assert_eq!(head.answer.headers()["content-length"], "50");
    assert!(head.answer.body().is_empty());
    assert_eq!(next.answer.body().as_ref(), b"xxxxx");
}

#[tokio::test]
async fn a_calls_own_deadline_replaces_the_upstreams() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |options| options.hedge.enabled = false);

    let err = upstream
        .send(
            &Request::get("/slow/2000")
                .unwrap()
                .with_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();

    assert!(
        err.chain().contains("no answer within 100ms"),
        "{}",
        err.chain()
    );
    let zero = upstream
        .send(&Request::get("/").unwrap().with_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(zero.kind(), "deadline");
}

#[tokio::test]
async fn a_chunked_answer_read_to_its_end_leaves_its_connection_for_the_next_request() {
    let raw = Raw::start(local(), |_| {
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        )
    });
    let (upstream, _registry) = fixed(raw.addr, |_| {});

    for _ in 0..2 {
        let reply = upstream.send(&Request::get("/").unwrap()).await.unwrap();
        assert_eq!(reply.answer.body().as_ref(), b"ok");
    }

    let nths: Vec<usize> = raw.seen().iter().map(|seen| seen.nth).collect();
    assert_eq!(nths, [0, 1], "the connection was not kept");
}

#[tokio::test]
async fn a_connection_the_answer_closes_carries_no_further_request() {
    // The server says `connection: close` but leaves the connection open: only the answer's
    // word keeps the next request off it.
    let raw = Raw::start(local(), |_| {
        Act::Answer(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec())
    });
    let (upstream, _registry) = fixed(raw.addr, |_| {});

    for _ in 0..2 {
        let reply = upstream.send(&Request::get("/").unwrap()).await.unwrap();
        assert_eq!(reply.answer.body().as_ref(), b"ok");
    }

    let nths: Vec<usize> = raw.seen().iter().map(|seen| seen.nth).collect();
    assert_eq!(
        nths,
        [0, 0],
        "the second request went on the closed connection"
    );
}

#[tokio::test]
async fn a_call_with_no_deadline_of_its_own_has_the_attempt_timeout_alone() {
    // A deadline beyond what the clock holds stands for a year: a call still has each
    // attempt's timeout, here long enough for an answer that takes over two seconds.
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |options| {
        options.hedge.enabled = false;
        options.retry.attempt_timeout = Duration::from_secs(30);
        options.retry.request_timeout = Duration::from_secs(30);
    });

    let reply = upstream
        .send(
            &Request::get("/slow/2100")
                .unwrap()
                .with_timeout(Duration::MAX),
        )
        .await
        .unwrap_or_else(|err| panic!("{}", err.chain()));

    assert_eq!(reply.answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_line_end_put_in_through_any_constructor_never_reaches_the_wire() {
    let raw = Raw::start(local(), |_| Act::Answer(ok("fine")));
    let injected = "a\r\nx-injected: 1";

    assert_eq!(
        Request::get("/a\r\nx-injected: 1").unwrap_err(),
        RequestError::BadTarget
    );
    let get = Request::get("/").unwrap();
    assert!(get.clone().with_header("x-a", injected).is_err());
    assert!(get.clone().with_header("x-a", injected.as_bytes()).is_err());
    assert!(get.clone().with_header("x-a\r\nx-injected", "1").is_err());
    let converted = upstream::http::Request::get("/x")
        .header("x-a", injected)
        .body(Bytes::new());
    assert!(converted.is_err(), "http's own builder refuses it too");
    let absolute = upstream::http::Request::get("http://elsewhere/").body(Bytes::new());
    assert_eq!(
        Request::try_from(absolute.unwrap()).unwrap_err(),
        RequestError::NotOriginForm
    );
    let trace = TraceContext::new([1; 16], true).unwrap();
    assert!(
        trace
            .with_amzn_root("1-5759e988-bd862e3fe1be4\r\nx-injected")
            .is_err()
    );
    let options = Options {
        via: Some(format!("1.1 {injected}")),
        ..Options::default()
    };
    let target = format!("http://{}", raw.addr).parse().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    assert!(Upstream::start(target, options, &mut registry).is_err());

    // What could be built goes out, and nothing else.
    let (upstream, _registry) = fixed(raw.addr, |_| {});
    upstream
        .send(&get.with_header("x-a", "a").unwrap())
        .await
        .unwrap();
    let seen = raw.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen.iter()
            .all(|seen| !seen.raw.windows(8).any(|w| w == b"injected"))
    );
}

#[tokio::test]
async fn a_request_sent_again_on_its_connection_goes_as_built_and_a_changed_one_as_changed() {
    let raw = Raw::start(local(), |_| Act::Answer(ok("fine")));
    let (upstream, _registry) = fixed(raw.addr, |_| {});
    let first = Request::post("/a", "one").unwrap();
    let changed = first.clone().with_body("three");
    let traced = first
        .clone()
        .with_trace(TraceContext::new([9; 16], true).unwrap());

    for request in [&first, &first, &changed, &first, &traced, &traced] {
        upstream.send(request).await.unwrap();
    }

    let seen = raw.seen();
    assert_eq!(
        seen.iter().map(|seen| seen.nth).max(),
        Some(5),
        "one connection"
    );
    let bodies: Vec<&[u8]> = seen.iter().map(|seen| seen.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"one"[..], b"one", b"three", b"one", b"one", b"one"]
    );
    assert_eq!(seen[0].raw, seen[1].raw);
    assert_eq!(seen[0].raw, seen[3].raw);
    assert_ne!(seen[4].header("traceparent"), seen[5].header("traceparent"));
}

#[tokio::test]
async fn calls_on_a_clone_still_go_out_after_the_upstream_was_shut_down() {
    // Each request on the current-thread runtime, queued to leave with the turn's others
    // before, goes out from its caller once the writer has stopped.
    let raw = Raw::start(local(), |_| Act::Answer(ok("still")));
    let (upstream, _registry) = fixed(raw.addr, |_| {});
    let get = Request::get("/").unwrap();
    upstream.send(&get).await.unwrap();
    let clone = upstream.clone();

    upstream.shutdown().await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), clone.send(&get))
        .await
        .expect("not left waiting")
        .unwrap();

    assert_eq!(&reply.answer.body()[..], b"still");
    assert_eq!(raw.seen().len(), 2);
}
