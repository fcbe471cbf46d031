//! Instances that fail: a killed instance still in DNS costs no failed request; every
//! instance down gives a prompt 503 and recovery; DNS failing keeps the last answer.

use std::time::Duration;

use tokio::time::Instant;

use crate::dns_server::{DnsServer, Mode};
use crate::helpers::{Hello, NameInstance, SERVICE, cluster, ips, name_instances};

#[tokio::test]
async fn a_killed_instance_still_in_dns_fails_no_request() {
    let (mut names, _dns, hello) = cluster(3, 600, &[]).await;

    names.remove(1).kill();
    let tally = hello.tally(200).await;

    assert_eq!(tally.values().sum::<usize>(), 200);
    assert_eq!(tally.get("n2"), None, "{tally:?}");
    let (_, metrics) = hello.get("/metrics").await;
    assert!(
        metrics.contains("hello_endpoint_ejections_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_instance_down_gives_503_within_the_deadline_and_recovers() {
    let names = name_instances(3);
    let addrs: Vec<_> = names.iter().map(|instance| instance.addr).collect();
    let dns = DnsServer::start(1).await;
    dns.set_a(SERVICE, &ips(&names));
    let url = format!("http://name.internal:{}", addrs[0].port());
    let hello = Hello::start(&dns, &url, &["--request-timeout", "2s"]).await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);
    for instance in names {
        instance.kill();
    }

    let asked = Instant::now();
    let (status, body) = hello.get("/").await;
    let took = asked.elapsed();

    assert_eq!(status, 503);
    assert!(body.contains("name.internal"), "{body}");
    assert!(
        took < Duration::from_secs(3),
        "503 took {took:?}, deadline 2 s"
    );
    assert_eq!(hello.get("/healthz").await.0, 200, "hello stopped serving");

    let back = NameInstance::start("n2", addrs[1]);
    let recovered = hello
        .until(Duration::from_secs(10), |greeting| {
            greeting.name_instance == back.id
        })
        .await;
    assert!(recovered, "no answer after n2 came back");
}

#[tokio::test]
async fn a_failing_dns_server_keeps_the_last_answer() {
    let (_names, dns, hello) = cluster(2, 1, &["--dns-min-ttl", "100ms"]).await;

    dns.set_mode(Mode::ServFail);
    let failing = hello
        .wait_known(Duration::from_secs(5), |state, _| state == "failing")
        .await;
    assert!(failing, "the failed refresh was not noticed");

    let tally = hello.tally(40).await;
    assert_eq!(tally.len(), 2, "{tally:?}");
    let (_, debug) = hello.get("/debug/endpoints").await;
    assert!(debug.contains("\"stale\""), "{debug}");
}

#[tokio::test]
async fn a_hung_instance_costs_an_attempt_timeout_not_a_failed_request() {
    let (mut names, _dns, hello) = cluster(3, 600, &["--attempt-timeout", "200ms"]).await;

    // n3's port now accepts connections (the kernel completes them) but nothing answers, as
    // with a task that hangs.
    let n3 = names.remove(2);
    let addr = n3.addr;
    n3.kill();
    let _hung = std::net::TcpListener::bind(addr).unwrap();
    let tally = hello.tally(60).await;

    assert_eq!(tally.values().sum::<usize>(), 60);
    assert_eq!(tally.get("n3"), None, "{tally:?}");
    assert!(hello.metric("hello_upstream_retries_total").await >= 1);
    assert!(hello.metric("hello_endpoint_ejections_total").await >= 1);
}

#[tokio::test]
async fn shutdown_stops_serving_and_returns_cleanly() {
    let (_names, _dns, hello) = cluster(1, 1, &[]).await;
    let base = hello.base.clone();
    let http = hello.http.clone();

    hello.stop().await.unwrap();

    assert!(
        http.get(&base).send().await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_4xx_is_neither_retried_nor_held_against_the_endpoint() {
    // A fixed endpoint (an IP address in the URL, no DNS) that refuses every request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refusing = axum::Router::new().fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    tokio::spawn(async move { axum::serve(listener, refusing).await });
    let dns = DnsServer::start(1).await;
    let hello = Hello::start(&dns, &format!("http://{addr}"), &[]).await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);

    let (status, body) = hello.get("/").await;

    assert_eq!(status, 503);
    assert!(body.contains("404"), "{body}");
    assert_eq!(hello.metric("hello_upstream_retries_total").await, 0);
    let (_, debug) = hello.get("/debug/endpoints").await;
    assert!(debug.contains("\"consecutive_failures\":0"), "{debug}");
}
