//! DNS mode with capped answers: a server that answers a rotating 8 of 12 records, as
//! MULTIVALUE does with more than 8 healthy instances, and one that answers a single rotating
//! record, as WEIGHTED does. hello's membership keeps every instance it has seen lately, so
//! all are used and the set does not churn.

use std::time::Duration;

use crate::helpers::{Cluster, SERVICE, eventually, fast_refresh, ips};

/// Rewrites the records every 50 ms: `size` of the instances' addresses, starting one further
/// each time.
fn rotate(dns: &crate::dns_server::DnsServer, all: Vec<std::net::Ipv4Addr>, size: usize) {
    let dns = dns.clone();
    tokio::spawn(async move {
        for turn in 0.. {
            let answer: Vec<_> = (0..size).map(|i| all[(turn + i) % all.len()]).collect();
            dns.set_a(SERVICE, &answer);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[tokio::test]
async fn a_rotating_8_of_12_builds_a_stable_set_of_12() {
    let cluster = Cluster::new(12)
        .in_dns(0..8)
        .ttl(0)
        .configure(fast_refresh)
        .start()
        .await;
    rotate(&cluster.dns, ips(&cluster.names), 8);

    let all_known = eventually(Duration::from_secs(5), || async {
        cluster.hello.known().await.1.len() == 12
    })
    .await;
    assert!(all_known, "{:?}", cluster.hello.known().await);

    // The set stays whole across refreshes: no endpoint leaves and comes back.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cluster.hello.known().await.1.len(), 12);
    }
    let all_healthy = eventually(Duration::from_secs(5), || async {
        let (_, body) = cluster.hello.get("/debug/endpoints").await;
        let debug: serde_json::Value = serde_json::from_str(&body).unwrap();
        let endpoints = debug["endpoints"].as_array().unwrap();
        endpoints
            .iter()
            .all(|endpoint| endpoint["state"] == "healthy")
    })
    .await;
    assert!(all_healthy);
    let tally = cluster.hello.tally(240).await;
    assert_eq!(tally.len(), 12, "{tally:?}");
}

#[tokio::test]
async fn a_rotating_single_record_converges_to_every_instance() {
    let cluster = Cluster::new(4)
        .in_dns(0..1)
        .ttl(0)
        .configure(fast_refresh)
        .start()
        .await;
    rotate(&cluster.dns, ips(&cluster.names), 1);

    let all_known = eventually(Duration::from_secs(5), || async {
        cluster.hello.known().await.1.len() == 4
    })
    .await;

    assert!(all_known, "{:?}", cluster.hello.known().await);
}
