//! The front door used as another service would: the `greeter` example's router, over a
//! cluster of `name` instances, with nothing from hello.

use axum::body::{Body, to_bytes};
use axum::http::Request;
use prometheus_client::registry::Registry;
use tower::ServiceExt;
use upstream::{Options, Upstream};

use crate::greeter;
use crate::helpers::Cluster;

#[tokio::test]
async fn another_service_calls_name_through_the_front_door() {
    let cluster = Cluster::new(2).start().await;
    let options = Options {
        dns_server: Some(cluster.dns.addr()),
        ..Options::default()
    };
    let target = format!("http://name.internal:{}", cluster.names[0].addr.port())
        .parse()
        .unwrap();
    let mut registry = Registry::default();
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    let ready = crate::helpers::eventually(std::time::Duration::from_secs(5), || {
        let known = upstream.known_endpoints();
        async move { known == 2 }
    })
    .await;
    assert!(ready, "the upstream found no endpoints");

    let response = greeter::router(upstream.clone())
        .unwrap()
        .oneshot(Request::get("/greet").body(Body::empty()).unwrap())
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = to_bytes(response.into_body(), 1024).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("Good day, "), "{text}");
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
    assert!(
        metrics.contains("upstream_attempts_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    upstream.shutdown().await.unwrap();
}
