//! What is repeated and what is not (RFC 9110 section 9.2.2): a request that may have
//! reached a server is sent again only when it is idempotent (by method, or marked with
//! `Idempotency-Key`); one that cannot have reached any (the connection refused) always may
//! be; a request that is not idempotent is never hedged. Two instances on one port behind a
//! DNS name, each a raw server that counts what it reads.

use std::time::Duration;

use upstream::Request;
use upstream::http::Method;

use crate::helpers::{Act, Raw, discovered, metric, ok, same_port};

/// Two raw instances acting with `act`, and an upstream discovering both.
async fn two(
    act: impl Fn(&crate::helpers::Seen) -> Act + Send + Sync + Clone + 'static,
    change: impl FnOnce(&mut upstream::Options),
) -> (
    Vec<Raw>,
    upstream::Upstream,
    prometheus_client::registry::Registry,
) {
    let listeners = same_port(2);
    let (upstream, registry, _dns) = discovered(&listeners, change).await;
    let raws = listeners
        .into_iter()
        .map(|listener| Raw::start(listener, act.clone()))
        .collect();
    (raws, upstream, registry)
}

/// Requests of `method` the instances read, together.
fn seen(raws: &[Raw], method: &str) -> usize {
    raws.iter()
        .flat_map(Raw::seen)
        .filter(|seen| seen.method == method)
        .count()
}

#[tokio::test]
async fn a_post_that_may_have_reached_a_server_is_not_sent_again() {
    let (raws, upstream, _registry) = two(|_| Act::Close, |_| {}).await;

    let err = upstream
        .send(&Request::post("/orders", "{}").unwrap())
        .await
        .unwrap_err();

    assert_eq!(seen(&raws, "POST"), 1);
    let chain = err.chain();
    assert!(
        chain.contains("(1 attempts; not retried: the request may have reached"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_post_is_sent_again_when_no_connection_could_be_made() {
    // Two addresses, nothing listening: every connection is refused.
    let listeners = same_port(2);
    let (upstream, _registry, _dns) = discovered(&listeners, |_| {}).await;
    drop(listeners);

    let err = upstream
        .send(&Request::post("/orders", "{}").unwrap())
        .await
        .unwrap_err();

    let chain = err.chain();
    assert!(chain.contains("(2 attempts)"), "{chain}");
    assert!(
        chain.contains("cannot connect: Connection refused"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_or_marked_is_sent_again() {
    let (raws, upstream, _registry) = two(|_| Act::Close, |_| {}).await;
    let keyed = Request::post("/orders", "{}")
        .unwrap()
        .with_header("idempotency-key", "7f3a")
        .unwrap();

    let err = upstream.send(&keyed).await.unwrap_err();

    assert!(err.chain().contains("(2 attempts)"), "{}", err.chain());
    assert_eq!(seen(&raws, "POST"), 2);
    let marked = Request::new(Method::PATCH, "/orders/1")
        .unwrap()
        .mark_idempotent();
    assert!(upstream.send(&marked).await.is_err());
    assert_eq!(seen(&raws, "PATCH"), 2);
}

#[tokio::test]
async fn a_put_is_sent_again() {
    let (raws, upstream, _registry) = two(|_| Act::Close, |_| {}).await;

    let err = upstream
        .send(
            &Request::new(Method::PUT, "/items/7")
                .unwrap()
                .with_body("seven"),
        )
        .await
        .unwrap_err();

    assert!(err.chain().contains("(2 attempts)"), "{}", err.chain());
    assert_eq!(seen(&raws, "PUT"), 2);
}

#[tokio::test]
async fn a_post_is_never_hedged_and_a_get_is() {
    let slow = |_: &crate::helpers::Seen| Act::AnswerAfter(Duration::from_millis(300), ok("late"));
    let (raws, upstream, registry) = two(slow, |options| {
        options.hedge.min_delay = Duration::from_millis(20);
        options.hedge.max_delay = Duration::from_millis(20);
    })
    .await;

    let post = upstream
        .send(&Request::post("/orders", "{}").unwrap())
        .await
        .unwrap();

    assert_eq!(post.attempts, 1);
    assert_eq!(seen(&raws, "POST"), 1);
    assert_eq!(metric(&registry, "upstream_hedges_total"), 0.0);
    // The same instances, a GET: it is hedged, so the test above could have failed.
    let get = upstream.send(&Request::get("/").unwrap()).await.unwrap();
    assert_eq!(get.attempts, 2);
    assert_eq!(metric(&registry, "upstream_hedges_total"), 1.0);
}

#[tokio::test]
async fn a_hedge_delay_as_long_as_the_attempt_timeout_sends_no_hedge() {
    let slow = |_: &crate::helpers::Seen| Act::AnswerAfter(Duration::from_secs(2), ok("late"));
    let (_raws, upstream, registry) = two(slow, |options| {
        options.retry.max_attempts = 2;
        options.retry.attempt_timeout = Duration::from_millis(100);
        options.hedge.min_delay = Duration::from_millis(100);
        options.hedge.max_delay = Duration::from_millis(100);
    })
    .await;

    let err = upstream
        .send(&Request::get("/").unwrap())
        .await
        .unwrap_err();

    assert!(err.chain().contains("(2 attempts)"), "{}", err.chain());
    assert_eq!(metric(&registry, "upstream_hedges_total"), 0.0);
}

#[tokio::test]
async fn a_hedge_is_an_attempt_and_a_call_of_one_attempt_has_none() {
    let slow = |_: &crate::helpers::Seen| Act::AnswerAfter(Duration::from_millis(300), ok("late"));
    let (raws, upstream, registry) = two(slow, |options| {
        options.retry.max_attempts = 1;
        options.hedge.min_delay = Duration::from_millis(20);
        options.hedge.max_delay = Duration::from_millis(20);
    })
    .await;

    let get = upstream.send(&Request::get("/").unwrap()).await.unwrap();

    assert_eq!(get.attempts, 1);
    assert_eq!(seen(&raws, "GET"), 1);
    assert_eq!(metric(&registry, "upstream_hedges_total"), 0.0);
}

#[tokio::test]
async fn a_reused_connection_closed_as_a_post_left_does_not_send_it_again() {
    // Answers the first request of each connection, closes on the second without answering:
    // the race of a server closing an idle connection as a request arrives, made certain.
    let raw = Raw::start(crate::helpers::local(), |seen| match seen.nth {
        0 => Act::Answer(ok("first")),
        _ => Act::Close,
    });
    let (upstream, _registry) = crate::helpers::fixed(raw.addr, |_| {});
    let get = Request::get("/").unwrap();
    let post = Request::post("/orders", "{}").unwrap();

    // A GET goes on a new connection, unseen by the caller.
    upstream.send(&get).await.unwrap();
    upstream.send(&get).await.unwrap();
    assert_eq!(raw.seen().len(), 3);
    // A POST does not: it was read.
    let err = upstream.send(&post).await.unwrap_err();

    assert_eq!(raw.seen().len(), 4);
    assert!(
        err.chain()
            .contains("connection closed before the answer was complete"),
        "{}",
        err.chain()
    );
}
