//! Requests spread over every discovered instance, and DNS is asked on the refresh schedule,
//! not per request.

use std::time::Duration;

use hickory_proto::rr::RecordType;
use tokio::time::Instant;

use crate::helpers::{Cluster, SERVICE, ms};

#[tokio::test]
async fn requests_spread_over_all_three_instances() {
    let cluster = Cluster::new(3).ttl(10).start().await;

    let first = cluster.hello.greet().await.unwrap();
    let tally = cluster.hello.tally(300).await;

    let addrs: Vec<String> = cluster
        .names
        .iter()
        .map(|instance| instance.addr.to_string())
        .collect();
    assert!(
        addrs.contains(&first.endpoint),
        "{} is not an instance",
        first.endpoint
    );
    assert_eq!(first.attempts, 1);
    assert_eq!(tally.len(), 3, "{tally:?}");
    for (instance, count) in &tally {
        assert!(*count >= 60, "{instance} got {count} of 300: {tally:?}");
    }
}

#[tokio::test]
async fn a_zero_ttl_does_not_mean_a_query_per_request() {
    // TTL 0, as the original sample's Cloud Map service had. A floor of 100 ms makes the
    // 1,000 requests span many refresh periods.
    let cluster = Cluster::new(3)
        .ttl(0)
        .configure(|config| config.dns.dns_min_ttl = ms(100))
        .start()
        .await;
    let started = Instant::now();
    let before = cluster.dns.queries(SERVICE, RecordType::A);

    cluster.hello.tally(1000).await;

    let queries = cluster.dns.queries(SERVICE, RecordType::A) - before;
    let seconds = started.elapsed().as_secs_f64();
    // One lookup per floor period, plus the one that may be under way at each end.
    let allowed = (seconds / 0.1).floor() as usize + 2;
    println!("1000 requests in {seconds:.2} s caused {queries} DNS queries (allowed {allowed})");
    assert!(queries <= allowed, "{queries} queries in {seconds:.2} s");
}

#[tokio::test]
async fn a_ttl_within_bounds_sets_the_refresh_period() {
    let cluster = Cluster::new(2)
        .ttl(1)
        .configure(|config| {
            config.dns.dns_min_ttl = ms(100);
            config.dns.dns_max_ttl = Duration::from_secs(30);
        })
        .start()
        .await;
    let started = Instant::now();
    let before = cluster.dns.queries(SERVICE, RecordType::A);

    tokio::time::sleep(Duration::from_millis(2500)).await;

    let queries = cluster.dns.queries(SERVICE, RecordType::A) - before;
    let seconds = started.elapsed().as_secs_f64();
    // Every second, as the TTL says: not every 100 ms (the floor), not never.
    assert!(queries >= 1, "no refresh in {seconds:.2} s");
    assert!(
        queries <= seconds.floor() as usize + 1,
        "{queries} queries in {seconds:.2} s"
    );
}
