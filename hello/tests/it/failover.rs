//! Instances that fail: a killed instance still in DNS costs no failed request; every
//! instance down gives a prompt 503 and recovery; DNS failing keeps the last answer.

use std::time::Duration;

use tokio::time::Instant;

use crate::dns_server::Mode;
use crate::helpers::{Cluster, NameInstance, ms};

#[tokio::test]
async fn a_killed_instance_still_in_dns_fails_no_request() {
    let mut cluster = Cluster::new(3).ttl(600).start().await;

    cluster.names.remove(1).kill();
    let tally = cluster.hello.tally(200).await;

    assert_eq!(tally.values().sum::<usize>(), 200);
    assert_eq!(tally.get("n2"), None, "{tally:?}");
    assert_eq!(
        cluster.hello.metric("hello_endpoint_ejections_total").await,
        1
    );
}

#[tokio::test]
async fn every_instance_down_gives_503_within_the_deadline_and_recovers() {
    let cluster = Cluster::new(3)
        .configure(|config| config.calls.request_timeout = Duration::from_secs(2))
        .start()
        .await;
    let addrs: Vec<_> = cluster.names.iter().map(|instance| instance.addr).collect();
    let hello = cluster.hello;
    for instance in cluster.names {
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
    let cluster = Cluster::new(2)
        .configure(|config| config.dns.dns_min_ttl = ms(100))
        .start()
        .await;

    cluster.dns.set_mode(Mode::ServFail);
    let failing = cluster
        .hello
        .wait_known(Duration::from_secs(5), |state, _| state == "failing")
        .await;
    assert!(failing, "the failed refresh was not noticed");

    let tally = cluster.hello.tally(40).await;
    assert_eq!(tally.len(), 2, "{tally:?}");
    let (_, debug) = cluster.hello.get("/debug/endpoints").await;
    assert!(debug.contains("\"stale\""), "{debug}");
}

#[tokio::test]
async fn a_hung_instance_costs_an_attempt_timeout_not_a_failed_request() {
    let mut cluster = Cluster::new(3)
        .ttl(600)
        .configure(|config| config.calls.attempt_timeout = ms(200))
        .start()
        .await;

    // n3's port now accepts connections (the kernel completes them) but nothing answers, as
    // with a task that hangs.
    let n3 = cluster.names.remove(2);
    let addr = n3.addr;
    n3.kill();
    let _hung = std::net::TcpListener::bind(addr).unwrap();
    let tally = cluster.hello.tally(60).await;

    assert_eq!(tally.values().sum::<usize>(), 60);
    assert_eq!(tally.get("n3"), None, "{tally:?}");
    assert!(cluster.hello.metric("hello_upstream_retries_total").await >= 1);
    assert!(cluster.hello.metric("hello_endpoint_ejections_total").await >= 1);
}

#[tokio::test]
async fn shutdown_stops_serving_and_returns_cleanly() {
    let cluster = Cluster::new(1).start().await;
    let base = cluster.hello.base.clone();
    let http = cluster.hello.http.clone();

    cluster.hello.stop().await.unwrap();

    assert!(
        http.get(&base).send().await.is_err(),
        "still accepting after shutdown"
    );
}
