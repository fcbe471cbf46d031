//! Changes in DNS reach the request path: instances that join get traffic, instances that
//! leave get none, a name that does not exist yet is reported and then recovered from, and
//! SRV records give each instance its own port.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::dns_server::DnsServer;
use crate::helpers::{Hello, NameInstance, SERVICE, cluster, ips, name_instances};

const FAST_REFRESH: &[&str] = &["--dns-min-ttl", "100ms", "--dns-max-ttl", "1s"];

#[tokio::test]
async fn an_added_record_gets_traffic_after_the_next_refresh() {
    let names = name_instances(3);
    let dns = DnsServer::start(1).await;
    dns.set_a(SERVICE, &ips(&names[..2]));
    let url = format!("http://name.internal:{}", names[0].addr.port());
    let hello = Hello::start(&dns, &url, FAST_REFRESH).await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);
    assert!(
        !hello.tally(50).await.contains_key("n3"),
        "n3 is not in DNS yet"
    );

    dns.set_a(SERVICE, &ips(&names));

    let reached = hello
        .until(Duration::from_secs(5), |greeting| {
            greeting.name_instance == "n3"
        })
        .await;
    assert!(reached, "n3 got no traffic after it was added");
}

#[tokio::test]
async fn a_removed_record_gets_no_traffic_after_the_next_refresh() {
    let (names, dns, hello) = cluster(3, 1, FAST_REFRESH).await;
    assert!(hello.tally(60).await.contains_key("n1"));

    dns.set_a(SERVICE, &ips(&names[1..]));
    let gone = names[0].addr.to_string();
    let applied = hello
        .wait_known(Duration::from_secs(5), |_, addrs| !addrs.contains(&gone))
        .await;
    assert!(applied, "n1 still known after the refresh");

    let tally = hello.tally(100).await;
    assert_eq!(tally.get("n1"), None, "{tally:?}");
    assert_eq!(tally.len(), 2, "{tally:?}");
}

#[tokio::test]
async fn nxdomain_at_start_is_reported_then_recovered_from() {
    let names = name_instances(1);
    let dns = DnsServer::start(1).await;
    let url = format!("http://name.internal:{}", names[0].addr.port());
    let hello = Hello::start(&dns, &url, FAST_REFRESH).await;
    let answered = hello
        .wait_known(Duration::from_secs(5), |state, _| state == "no_records")
        .await;
    assert!(answered, "no negative answer applied");

    let (ready, _) = hello.get("/readyz").await;
    let (status, body) = hello.get("/").await;

    assert_eq!(ready, 503);
    assert_eq!(status, 503);
    assert!(body.contains("name.internal"), "{body}");
    assert!(body.contains("NXDOMAIN"), "{body}");

    dns.set_a(SERVICE, &ips(&names));
    assert!(
        hello.wait_ready(Duration::from_secs(5)).await,
        "never became ready"
    );
    assert!(hello.greet().await.is_ok());
}

#[tokio::test]
async fn srv_records_give_each_instance_its_port() {
    // Three instances on one address, three ports: only SRV can tell them apart.
    let mut names = Vec::new();
    for id in ["n1", "n2", "n3"] {
        names.push(NameInstance::start(id, (Ipv4Addr::LOCALHOST, 0).into()));
    }
    let dns = DnsServer::start(10).await;
    let targets: Vec<(u16, String)> = names
        .iter()
        .map(|instance| {
            (
                instance.addr.port(),
                format!("{}.name.internal.", instance.id),
            )
        })
        .collect();
    let srv: Vec<(u16, &str)> = targets
        .iter()
        .map(|(port, target)| (*port, target.as_str()))
        .collect();
    dns.set_srv(SERVICE, &srv);
    for (_, target) in &targets {
        dns.set_a(target, &[Ipv4Addr::LOCALHOST]);
    }
    // The URL's port is not used with SRV records.
    let hello = Hello::start(
        &dns,
        "http://name.internal:1",
        &["--discovery-record", "srv"],
    )
    .await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);

    let tally = hello.tally(90).await;

    assert_eq!(tally.len(), 3, "{tally:?}");
}
