//! Changes in DNS reach the request path: instances that join get traffic, instances that
//! leave get none, a name that does not exist yet is reported and then recovered from, and
//! SRV records give each instance its own port.

use std::net::Ipv4Addr;
use std::time::Duration;

use upstream::RecordKind;

use crate::helpers::{Cluster, NameInstance, SERVICE, fast_refresh, ips};

#[tokio::test]
async fn an_added_record_gets_traffic_after_the_next_refresh() {
    let cluster = Cluster::new(3)
        .in_dns(0..2)
        .configure(fast_refresh)
        .start()
        .await;
    assert!(
        !cluster.hello.tally(50).await.contains_key("n3"),
        "n3 is not in DNS yet"
    );

    cluster.dns.set_a(SERVICE, &ips(&cluster.names));

    let reached = cluster
        .hello
        .until(Duration::from_secs(5), |greeting| {
            greeting.name_instance == "n3"
        })
        .await;
    assert!(reached, "n3 got no traffic after it was added");
}

#[tokio::test]
async fn a_removed_record_gets_no_traffic_after_the_next_refresh() {
    let cluster = Cluster::new(3).configure(fast_refresh).start().await;
    assert!(cluster.hello.tally(60).await.contains_key("n1"));

    cluster.dns.set_a(SERVICE, &ips(&cluster.names[1..]));
    let gone = cluster.names[0].addr.to_string();
    let applied = cluster
        .hello
        .wait_known(Duration::from_secs(5), |_, addrs| !addrs.contains(&gone))
        .await;
    assert!(applied, "n1 still known after the refresh");

    let tally = cluster.hello.tally(100).await;
    assert_eq!(tally.get("n1"), None, "{tally:?}");
    assert_eq!(tally.len(), 2, "{tally:?}");
}

#[tokio::test]
async fn nxdomain_at_start_is_reported_then_recovered_from() {
    let cluster = Cluster::new(1)
        .in_dns(0..0)
        .configure(fast_refresh)
        .unready()
        .start()
        .await;
    let hello = &cluster.hello;
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

    cluster.dns.set_a(SERVICE, &ips(&cluster.names));
    assert!(
        hello.wait_ready(Duration::from_secs(5)).await,
        "never became ready"
    );
    assert!(hello.greet().await.is_ok());
}

#[tokio::test]
async fn srv_records_give_each_instance_its_port() {
    // Three instances on one address, three ports: only SRV can tell them apart. The URL's
    // port is not used with SRV records.
    let names: Vec<NameInstance> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| NameInstance::start(id, (Ipv4Addr::LOCALHOST, 0).into()))
        .collect();
    let targets: Vec<(u16, String)> = names
        .iter()
        .map(|instance| {
            (
                instance.addr.port(),
                format!("{}.name.internal.", instance.id),
            )
        })
        .collect();
    let cluster = Cluster::new(0)
        .ttl(10)
        .url("http://name.internal:1")
        .records(move |dns| {
            let srv: Vec<(u16, &str)> = targets
                .iter()
                .map(|(port, target)| (*port, target.as_str()))
                .collect();
            dns.set_srv(SERVICE, &srv);
            for (_, target) in &targets {
                dns.set_a(target, &[Ipv4Addr::LOCALHOST]);
            }
        })
        .configure(|config| config.upstream.discovery_record = RecordKind::Srv)
        .start()
        .await;

    let tally = cluster.hello.tally(90).await;

    assert_eq!(tally.len(), 3, "{tally:?}");
    drop(names);
}
