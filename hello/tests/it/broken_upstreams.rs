//! hello against `name` instances that misbehave, over real sockets: an endless or oversized
//! answer, a 404 from a reused address, load shedding with 429, an instance that never
//! answers, most records dead, and every instance down and then one back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::helpers::{Cluster, NameInstance, SERVICE, eventually, fast_refresh, ms};

/// Replaces instance `index` of the cluster with `router` on the same address.
fn replace(
    cluster: &mut crate::helpers::Running,
    index: usize,
    router: axum::Router,
) -> SocketAddr {
    let addr = cluster.names.remove(index).addr;
    cluster.names.insert(
        index,
        NameInstance::start("placeholder", "127.0.0.1:0".parse().unwrap()),
    );
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// An instance at `addr` that answers every request 200 with a chunked body that never
/// ends; returns the count of body bytes it managed to send.
fn endless(addr: SocketAddr) -> Arc<AtomicUsize> {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
                // Bounded even if nobody stops reading: 1 GiB at most.
                for _ in 0..131_072 {
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    counter.fetch_add(8192, Ordering::Relaxed);
                }
            });
        }
    });
    sent
}

#[tokio::test]
async fn an_endless_answer_costs_a_bounded_read_and_the_request_goes_elsewhere() {
    let mut cluster = Cluster::new(3).ttl(600).start().await;
    let addr = cluster.names.remove(0).addr;
    cluster
        .names
        .push(NameInstance::start("spare", "127.0.0.1:0".parse().unwrap()));
    let sent = endless(addr);

    let tally = cluster.hello.tally(30).await;

    assert_eq!(tally.values().sum::<usize>(), 30);
    assert!(
        cluster
            .hello
            .metric("hello_upstream_answers_too_large_total")
            .await
            >= 1
    );
    // hello stops reading after its 4 KiB limit; what the instance got out is what the
    // sockets' buffers took, not the gigabyte it would have sent to a reader that never stops.
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "hello read on: {sent} bytes sent");
}

#[tokio::test]
async fn an_oversized_or_malformed_name_is_not_relayed() {
    let mut cluster = Cluster::new(2).ttl(600).start().await;
    let long_name = axum::Router::new().fallback(|| async {
        axum::Json(serde_json::json!({"name": "A".repeat(20 << 20), "instance": "bad"}))
    });
    replace(&mut cluster, 0, long_name);
    let control = axum::Router::new().fallback(|| async {
        axum::Json(serde_json::json!({"name": "Ann\u{1b}[2J", "instance": "bad"}))
    });
    replace(&mut cluster, 1, control);

    let (status, body) = cluster.hello.get("/").await;

    assert_eq!(status, 503, "{body}");
    assert!(body.len() < 1000, "relayed: {} bytes", body.len());
    assert!(!body.contains("AAAA") && !body.contains('\u{1b}'), "{body}");
}

#[tokio::test]
async fn a_404_instance_is_retried_elsewhere_and_ejected() {
    let mut cluster = Cluster::new(3).ttl(600).start().await;
    replace(
        &mut cluster,
        1,
        axum::Router::new().fallback(|| async { StatusCode::NOT_FOUND }),
    );

    let tally = cluster.hello.tally(300).await;

    assert_eq!(tally.values().sum::<usize>(), 300, "{tally:?}");
    assert!(cluster.hello.metric("hello_endpoint_ejections_total").await >= 1);
}

#[tokio::test]
async fn a_429_instance_is_retried_elsewhere_and_cooled_not_ejected() {
    let mut cluster = Cluster::new(3).ttl(600).start().await;
    // Alive (its health check answers) but shedding the load of `GET /`.
    let shedding = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(|| async {
            let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            response
        });
    let addr = replace(&mut cluster, 2, shedding);

    let tally = cluster.hello.tally(300).await;

    assert_eq!(tally.values().sum::<usize>(), 300, "{tally:?}");
    let (_, metrics) = cluster.hello.get("/metrics").await;
    let (_, debug) = cluster.hello.get("/debug/endpoints").await;
    assert_eq!(
        cluster.hello.metric("hello_endpoint_ejections_total").await,
        0,
        "{debug}\n{metrics}"
    );
    assert!(
        metrics.contains("hello_upstream_attempts_total{outcome=\"overloaded\"} "),
        "{metrics}"
    );
    let (_, debug) = cluster.hello.get("/debug/endpoints").await;
    let debug: serde_json::Value = serde_json::from_str(&debug).unwrap();
    let shedder = debug["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["address"] == addr.to_string())
        .unwrap();
    assert_eq!(shedder["state"], "cooling", "{debug}");
}

#[tokio::test]
async fn a_black_holed_instance_costs_a_hedge_delay_not_an_attempt_timeout() {
    let mut cluster = Cluster::new(3)
        .ttl(600)
        .configure(|config| {
            config.calls.attempt_timeout = Duration::from_secs(2);
            config.calls.hedge_max_delay = ms(100);
        })
        .start()
        .await;
    // The kernel completes connections to this address, but nothing ever answers.
    let addr = cluster.names.remove(0).addr;
    let _black_hole = std::net::TcpListener::bind(addr).unwrap();

    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let asked = Instant::now();
        assert!(cluster.hello.greet().await.is_ok());
        slowest = slowest.max(asked.elapsed());
    }

    // Without hedges a request that met the black hole would wait its 2 s attempt timeout.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request took {slowest:?}"
    );
    assert!(
        cluster
            .hello
            .metric("hello_upstream_hedges_won_total")
            .await
            >= 1
    );
    assert!(cluster.hello.metric("hello_endpoint_ejections_total").await >= 1);
}

#[tokio::test]
async fn with_17_of_20_records_dead_requests_succeed_once_probes_have_run() {
    let cluster = Cluster::new(3).configure(fast_refresh).start().await;
    let port = cluster.names[0].addr.port();
    // 17 more records, on addresses where nothing listens: stale records after a scale-in.
    let mut ips = crate::helpers::ips(&cluster.names);
    ips.extend((0..17).map(|i| std::net::Ipv4Addr::new(127, 0, 0, 40 + i)));
    cluster.dns.set_a(SERVICE, &ips);
    let dead = |addrs: &[serde_json::Value]| {
        addrs
            .iter()
            .filter(|endpoint| endpoint["state"] == "ejected")
            .count()
    };
    let settled = eventually(Duration::from_secs(5), || async {
        let (_, debug) = cluster.hello.get("/debug/endpoints").await;
        let debug: serde_json::Value = serde_json::from_str(&debug).unwrap();
        let endpoints = debug["endpoints"].as_array().unwrap();
        endpoints.len() == 20 && dead(endpoints) == 17
    })
    .await;
    assert!(settled, "the 17 dead records were not all ejected");

    let mut ok = 0;
    for _ in 0..200 {
        ok += usize::from(cluster.hello.greet().await.is_ok());
    }

    assert!(ok >= 198, "{ok} of 200 succeeded");
    assert!(port > 0);
}

#[tokio::test]
async fn after_every_instance_was_down_one_back_answers_within_a_probe_interval_or_two() {
    let cluster = Cluster::new(3).ttl(600).start().await;
    let addrs: Vec<SocketAddr> = cluster.names.iter().map(|instance| instance.addr).collect();
    let hello = cluster.hello;
    for instance in cluster.names {
        instance.kill();
    }
    // A while of total outage: every attempt fails, every endpoint is ejected or suspect.
    for _ in 0..30 {
        assert_eq!(hello.get("/").await.0, 503);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let back = NameInstance::start("n2", addrs[1]);
    let started = Instant::now();
    let recovered = hello
        .until(Duration::from_secs(10), |greeting| {
            greeting.name_instance == back.id
        })
        .await;
    let took = started.elapsed();

    assert!(recovered, "no answer after n2 came back");
    println!("first success {took:?} after n2 came back");
    // Probes run every 500 ms: well under the 11 s that doubling ejections used to cost.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
