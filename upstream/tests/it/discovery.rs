//! Discovery from the caller's side: the first call after start waits for discovery's first
//! answer within its deadline (readiness still says no endpoint until then), and Cloud Map's
//! API is a source like DNS, whose revision poll asks for the list as soon as it moves.

use std::time::Duration;

use tokio::time::Instant;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_servicediscovery::config::{Credentials, SharedCredentialsProvider};
use upstream::{CloudMapOptions, Request, Source};

use crate::cloudmap_server::CloudMapServer;
use crate::dns_server::Mode;
use crate::helpers::{dns_for, echo, local, same_port, start};

/// An upstream for `svc.internal` through the fake API `server`, with `options` (their SDK
/// configuration replaced by one for the fake). The target's port is the fallback; the fake
/// sends `AWS_INSTANCE_PORT`.
fn cloudmap(
    server: &CloudMapServer,
    options: CloudMapOptions,
) -> (upstream::Upstream, prometheus_client::registry::Registry) {
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
    let target = "http://svc.internal:9".parse().unwrap();
    start(target, |all| {
        all.source = Source::CloudMap;
        all.cloudmap = CloudMapOptions {
            sdk: Some(sdk),
            ..options
        };
    })
}

/// Polls `done` every 10 ms until it holds or five seconds pass.
async fn within_5s(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

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
    assert_eq!(upstream.name(), "svc.internal", "the name messages show");
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
    let (upstream, _registry) = cloudmap(&server, CloudMapOptions::default());

    let reply = upstream.send(&Request::get("/").unwrap()).await.unwrap();

    assert_eq!(reply.endpoint, addr);
    assert!(server.calls("DiscoverInstances") >= 1);
}

#[tokio::test]
async fn a_moved_revision_asks_for_the_list_before_the_full_call_is_due() {
    let server = CloudMapServer::start("internal", "svc").await;
    server.register("i-1", echo(local()), None);
    // No full call falls due during the test, and no API call times out (none is made twice):
    // only a moved revision can ask for the list again.
    let (upstream, _registry) = cloudmap(
        &server,
        CloudMapOptions {
            poll_interval: Duration::from_millis(50),
            full_interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
            ..CloudMapOptions::default()
        },
    );
    assert!(within_5s(|| upstream.known_endpoints() == 1).await);
    assert_eq!(server.calls("DiscoverInstances"), 1);

    // Polls that see the same revision ask for nothing more.
    let polls = server.calls("DiscoverInstancesRevision");
    assert!(within_5s(|| server.calls("DiscoverInstancesRevision") >= polls + 3).await);
    assert_eq!(server.calls("DiscoverInstances"), 1);

    // A registration moves the revision: the next poll asks for the list, once.
    let second = echo(local());
    server.register("i-2", second, None);
    assert!(
        within_5s(|| upstream.known_endpoints() == 2).await,
        "{:?}",
        upstream.report()
    );
    assert_eq!(server.calls("DiscoverInstances"), 2);
}
