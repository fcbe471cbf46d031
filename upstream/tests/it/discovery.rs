//! Discovery from the caller's side: the first call after start waits for discovery's first
//! answer within its deadline (readiness still says no endpoint until then), and Cloud Map's
//! API is a source like DNS.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_servicediscovery::config::{Credentials, SharedCredentialsProvider};
use upstream::{CloudMapOptions, Request, Source};

use crate::cloudmap_server::CloudMapServer;
use crate::dns_server::Mode;
use crate::helpers::{dns_for, echo, local, same_port, start};

#[tokio::test]
async fn the_first_call_waits_for_discoverys_first_answer() {
    let mut listeners = same_port(1);
    let (dns, target) = dns_for(&listeners).await;
    echo(listeners.remove(0));
    dns.set_mode(Mode::Hold);
    let (upstream, _registry) = start(target, |options| options.dns_server = Some(dns.addr()));

    let call = tokio::spawn({
        let upstream = upstream.clone();
        async move { upstream.send(&Request::get("/").unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(!call.is_finished(), "the call did not wait");
    assert_eq!(upstream.known_endpoints(), 0, "not ready before the answer");
    dns.set_mode(Mode::Answer);
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply.answer.status(), 200);
    assert_eq!(upstream.known_endpoints(), 1);
}

#[tokio::test]
async fn a_first_call_whose_deadline_passes_first_says_discovery_has_not_answered() {
    let listeners = same_port(1);
    let (dns, target) = dns_for(&listeners).await;
    dns.set_mode(Mode::Hold);
    let (upstream, _registry) = start(target, |options| options.dns_server = Some(dns.addr()));

    let err = upstream
        .send(
            &Request::get("/")
                .unwrap()
                .with_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();

    assert_eq!(err.kind(), "no_endpoints");
    assert!(
        err.chain().contains("has not answered yet"),
        "{}",
        err.chain()
    );
}

#[tokio::test]
async fn cloud_maps_api_is_a_source_like_dns() {
    let server = CloudMapServer::start("internal", "svc").await;
    let listener = local();
    let addr = echo(listener);
    server.register("i-1", addr, Some("eu-west-1a"));
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(server.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTESTTESTTESTTEST",
            "secret",
            None,
            None,
            "test",
        )))
        .build();
    // The port is the fallback; the fake sends `AWS_INSTANCE_PORT`.
    let target = "http://svc.internal:9".parse().unwrap();
    let (upstream, _registry) = start(target, |options| {
        options.source = Source::CloudMap;
        options.cloudmap = CloudMapOptions {
            sdk: Some(sdk),
            ..CloudMapOptions::default()
        };
    });

    let reply = upstream.send(&Request::get("/").unwrap()).await.unwrap();

    assert_eq!(reply.endpoint, addr);
    assert!(server.calls("DiscoverInstances") >= 1);
}
