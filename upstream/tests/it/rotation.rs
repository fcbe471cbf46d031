//! Which endpoints take the calls: a retry goes to an endpoint its call has not tried yet; an
//! ejected endpoint is back in rotation once its probe answers, while the others serve
//! (nothing is left to fail open to it); and an endpoint whose probe fails while another serves
//! is ejected without a call. Raw instances on one port behind a DNS name; they answer the
//! probes (`GET /healthz`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use upstream::{Request, TtlBounds, Upstream};

use crate::helpers::{Act, Raw, SERVICE, discovered, ip, metric, ok, same_port};

/// A 500 answer, length-framed.
const SERVER_ERROR: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";

/// Each endpoint's state as the upstream reports it, by address.
fn states(upstream: &Upstream) -> HashMap<SocketAddr, String> {
    let report = serde_json::to_value(upstream.report()).unwrap();
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| {
            let addr = endpoint["address"].as_str().unwrap().parse().unwrap();
            (addr, endpoint["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// True when the upstream reports `addr` in `state`.
fn is(upstream: &Upstream, addr: SocketAddr, state: &str) -> bool {
    states(upstream).get(&addr).is_some_and(|now| now == state)
}

/// Polls `done` every 10 ms until it holds or ten seconds pass.
async fn within_10s(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Waits up to ten seconds for every endpoint of `addrs` to be in `state`.
async fn wait_for(upstream: &Upstream, addrs: &[SocketAddr], state: &str) {
    let all = || addrs.iter().all(|addr| is(upstream, *addr, state));
    assert!(within_10s(all).await, "not {state}: {:?}", states(upstream));
}

fn get() -> Request {
    Request::get("/").unwrap()
}

#[tokio::test]
async fn a_retry_goes_to_an_endpoint_the_call_has_not_tried() {
    // Both endpoints proven and ready; one fails every call, and is never ejected: only the
    // call's own list of endpoints tried keeps its retry off the failing one (drawn again,
    // one call in four would fail).
    let listeners = same_port(2);
    let (upstream, registry, _dns) = discovered(&listeners, |options| {
        options.retry.max_attempts = 2;
        options.retry.budget_min_per_second = 1000;
        options.ejection.after_failures = u32::MAX;
        options.hedge.enabled = false;
    })
    .await;
    let mut listeners = listeners.into_iter();
    let failing = Raw::start(listeners.next().unwrap(), |_| {
        Act::Answer(SERVER_ERROR.to_vec())
    });
    let good = Raw::start(listeners.next().unwrap(), |_| Act::Answer(ok("good")));
    wait_for(&upstream, &[failing.addr, good.addr], "healthy").await;

    for call in 0..60 {
        let reply = upstream
            .send(&get())
            .await
            .unwrap_or_else(|err| panic!("call {call}: {}", err.chain()));
        assert_eq!(reply.endpoint, good.addr);
    }
    // The failing endpoint was drawn first about half the time, and each time the retry went
    // to the other.
    let retried = failing.seen().len();
    assert!(retried > 0, "the failing endpoint was never drawn");
    assert_eq!(metric(&registry, "upstream_retries_total"), retried as f64);
    assert!(
        is(&upstream, failing.addr, "healthy"),
        "{:?}",
        states(&upstream)
    );
}

#[tokio::test]
async fn a_call_makes_at_most_max_attempts_with_endpoints_left_untried() {
    let listeners = same_port(3);
    let (upstream, _registry, _dns) = discovered(&listeners, |options| {
        options.retry.max_attempts = 2;
        options.retry.budget_min_per_second = 1000;
        options.ejection.after_failures = u32::MAX;
        options.hedge.enabled = false;
    })
    .await;
    let failing: Vec<Raw> = listeners
        .into_iter()
        .map(|listener| Raw::start(listener, |_| Act::Answer(SERVER_ERROR.to_vec())))
        .collect();

    let err = upstream.send(&get()).await.unwrap_err();

    assert!(err.chain().contains("(2 attempts)"), "{}", err.chain());
    let seen: usize = failing.iter().map(|raw| raw.seen().len()).sum();
    assert_eq!(seen, 2, "a third endpoint was tried");
}

#[tokio::test]
async fn with_the_retry_budget_spent_a_failed_attempt_is_not_retried() {
    let listeners = same_port(2);
    let (upstream, registry, _dns) = discovered(&listeners, |options| {
        options.retry.max_attempts = 2;
        options.retry.budget_percent = 0;
        options.retry.budget_min_per_second = 0;
        options.hedge.enabled = false;
    })
    .await;
    let failing: Vec<Raw> = listeners
        .into_iter()
        .map(|listener| Raw::start(listener, |_| Act::Answer(SERVER_ERROR.to_vec())))
        .collect();

    let err = upstream.send(&get()).await.unwrap_err();

    assert!(
        err.chain().contains("(1 attempts; retry budget spent)"),
        "{}",
        err.chain()
    );
    let seen: usize = failing.iter().map(|raw| raw.seen().len()).sum();
    assert_eq!(seen, 1);
    assert_eq!(metric(&registry, "upstream_retries_refused_total"), 1.0);
}

#[tokio::test]
async fn an_endpoint_that_sheds_load_cools_down_for_its_retry_after() {
    let listeners = same_port(2);
    let (upstream, _registry, _dns) = discovered(&listeners, |options| {
        options.hedge.enabled = false;
    })
    .await;
    let mut listeners = listeners.into_iter();
    let shedding = Raw::start(listeners.next().unwrap(), |_| {
        Act::Answer(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 30\r\ncontent-length: 0\r\n\r\n"
                .to_vec(),
        )
    });
    let steady = Raw::start(listeners.next().unwrap(), |_| Act::Answer(ok("steady")));
    wait_for(&upstream, &[shedding.addr, steady.addr], "healthy").await;

    // Calls until one meets the shedding endpoint (and goes on to the other).
    for _ in 0..200 {
        if !shedding.seen().is_empty() {
            break;
        }
        let reply = upstream.send(&get()).await.unwrap();
        assert_eq!(reply.endpoint, steady.addr);
    }

    assert_eq!(shedding.seen().len(), 1);
    assert!(
        is(&upstream, shedding.addr, "cooling"),
        "{:?}",
        states(&upstream)
    );
}

#[tokio::test]
async fn an_ejected_endpoint_is_back_in_rotation_once_its_probe_answers() {
    let listeners = same_port(2);
    let (upstream, _registry, _dns) = discovered(&listeners, |options| {
        options.retry.max_attempts = 1;
        options.ejection.after_failures = 1;
        options.ejection.base_time = Duration::from_millis(200);
        options.probe.interval = Duration::from_millis(50);
        options.hedge.enabled = false;
    })
    .await;
    let broken = Arc::new(AtomicBool::new(true));
    let mut listeners = listeners.into_iter();
    let flaky = Raw::start(listeners.next().unwrap(), {
        let broken = Arc::clone(&broken);
        move |_| match broken.load(Ordering::Relaxed) {
            true => Act::Answer(SERVER_ERROR.to_vec()),
            false => Act::Answer(ok("flaky")),
        }
    });
    let steady = Raw::start(listeners.next().unwrap(), |_| Act::Answer(ok("steady")));
    wait_for(&upstream, &[flaky.addr, steady.addr], "healthy").await;

    // Calls until one fails on the flaky endpoint, which ejects it.
    for _ in 0..200 {
        if is(&upstream, flaky.addr, "ejected") {
            break;
        }
        let _ = upstream.send(&get()).await;
    }
    assert!(
        is(&upstream, flaky.addr, "ejected"),
        "{:?}",
        states(&upstream)
    );
    broken.store(false, Ordering::Relaxed);

    // The steady endpoint takes every call meanwhile, so no call goes to the ejected one:
    // only its probe can bring it back.
    wait_for(&upstream, &[flaky.addr], "healthy").await;
    assert!(
        is(&upstream, steady.addr, "healthy"),
        "{:?}",
        states(&upstream)
    );
    let mut answered_by_flaky = false;
    for _ in 0..200 {
        let reply = upstream.send(&get()).await.unwrap();
        if reply.endpoint == flaky.addr {
            answered_by_flaky = true;
            break;
        }
    }
    assert!(answered_by_flaky, "the readmitted endpoint takes no calls");
}

#[tokio::test]
async fn an_endpoint_that_fails_its_probe_while_another_serves_is_ejected() {
    // One instance, proven by its probe; then a second record whose address refuses
    // connections. Its probe runs alone in its round: only the proven endpoint says the
    // network works, and with it serving, a failed probe means a dead endpoint.
    let mut listeners = same_port(2);
    let dead = listeners.pop().unwrap();
    let (upstream, _registry, dns) = discovered(&listeners, |options| {
        options.ttl = TtlBounds {
            min: Duration::from_millis(50),
            max: Duration::from_millis(100),
        };
        options.probe.interval = Duration::from_millis(50);
    })
    .await;
    let ips = [ip(&listeners[0]), ip(&dead)];
    let serving = Raw::start(listeners.pop().unwrap(), |_| Act::Answer(ok("serving")));
    wait_for(&upstream, &[serving.addr], "healthy").await;
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    dns.set_a(SERVICE, &ips);

    wait_for(&upstream, &[dead_addr], "ejected").await;
    assert!(
        is(&upstream, serving.addr, "healthy"),
        "{:?}",
        states(&upstream)
    );
}
