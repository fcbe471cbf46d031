//! `DISCOVERY=cloudmap` against the fake Cloud Map API: every instance of a large set used,
//! deregistrations and health flips seen, throttling survived with the set kept, the endpoint
//! override reached without the SDK's `data-` host prefix. The SDK's configuration is built
//! here (endpoint, region, dummy credentials), not read from the process's environment, which
//! every test in this binary shares.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_servicediscovery::config::{Credentials, SharedCredentialsProvider};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use upstream::{CloudMapOptions, Options, Source, Upstream};

use crate::cloudmap_server::CloudMapServer;
use crate::helpers::{NameInstance, eventually, name_instances};

const POLL: Duration = Duration::from_millis(100);

/// The SDK pointed at the fake, with dummy credentials.
fn sdk(server: &CloudMapServer) -> SdkConfig {
    SdkConfig::builder()
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
        .build()
}

/// Options for Cloud Map discovery against `server`, polling every 100 ms.
pub fn options(server: &CloudMapServer) -> Options {
    Options {
        source: Source::CloudMap,
        cloudmap: CloudMapOptions {
            poll_interval: POLL,
            full_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            sdk: Some(sdk(server)),
            ..CloudMapOptions::default()
        },
        ..Options::default()
    }
}

pub struct Setup {
    pub server: CloudMapServer,
    /// Kept running for the test's length.
    pub _names: Vec<NameInstance>,
    pub upstream: Upstream,
    pub registry: Registry,
}

/// `count` name instances registered in the fake (zones from `zones`, in turn), and an
/// upstream discovering them through it with `options`.
pub async fn start(count: u8, zones: &[&str], change: impl FnOnce(&mut Options)) -> Setup {
    let server = CloudMapServer::start("internal", "name").await;
    let names = name_instances(count);
    for (i, name) in names.iter().enumerate() {
        server.register(
            &name.id,
            name.addr,
            zones.get(i % zones.len().max(1)).copied(),
        );
    }
    let mut options = options(&server);
    change(&mut options);
    // The port is the fallback; the fake sends `AWS_INSTANCE_PORT`.
    let target = "http://name.internal:9".parse().unwrap();
    let mut registry = Registry::with_prefix("hello");
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    Setup {
        server,
        _names: names,
        upstream,
        registry,
    }
}

impl Setup {
    pub async fn known(&self, count: usize, limit: Duration) -> bool {
        eventually(limit, || {
            let known = self.upstream.known_endpoints();
            async move { known == count }
        })
        .await
    }

    pub async fn call(&self) -> Result<String, String> {
        self.upstream
            .call(&crate::helpers::name_request(), crate::helpers::decode_name)
            .await
            .map(|reply| reply.answer.instance)
            .map_err(|err| chain(&err))
    }

    pub async fn tally(&self, count: usize) -> HashMap<String, usize> {
        let mut tally = HashMap::new();
        for _ in 0..count {
            *tally.entry(self.call().await.unwrap()).or_default() += 1;
        }
        tally
    }

    pub fn discovery_state(&self) -> String {
        let report = serde_json::to_value(self.upstream.report()).unwrap();
        report["discovery"]["state"].as_str().unwrap().to_owned()
    }

    pub fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

/// An error and its causes, as the 503 body shows them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn twenty_instances_are_all_used_and_spread() {
    let setup = start(20, &[], |_| {}).await;
    assert!(setup.known(20, Duration::from_secs(5)).await);

    let tally = setup.tally(400).await;

    assert_eq!(tally.len(), 20, "{tally:?}");
    assert!(tally.values().all(|count| *count >= 5), "{tally:?}");
}

#[tokio::test]
async fn a_deregistration_is_seen_within_one_poll() {
    // No full call falls due during the test, so only a revision poll can show the change;
    // and no call times out, so none is made twice.
    let setup = start(3, &[], |options| {
        options.cloudmap.full_interval = Duration::from_secs(3600);
        options.cloudmap.timeout = Duration::from_secs(60);
    })
    .await;
    assert!(setup.known(3, Duration::from_secs(5)).await);
    let full = setup.server.calls("DiscoverInstances");

    setup.server.deregister("n1");
    let polls = setup.server.calls("DiscoverInstancesRevision");
    // The first poll after the change sees the revision move, and its lookup asks for the
    // full list and applies it before the next poll begins. So the polls are read first, then
    // the set: n1 is gone by the time a second poll has been seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let polled = setup.server.calls("DiscoverInstancesRevision") - polls;
        if setup.upstream.known_endpoints() == 2 {
            break;
        }
        assert!(polled < 2, "n1 still known after {polled} polls");
        assert!(
            Instant::now() < deadline,
            "no poll after the deregistration"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Once dropped, n1 is never called again; and polls that see no move ask for nothing
    // more: the one full call is the one the moved revision asked for.
    let tally = setup.tally(30).await;
    assert!(!tally.contains_key("n1"), "{tally:?}");
    let more_polls = eventually(Duration::from_secs(5), || {
        let polled = setup.server.calls("DiscoverInstancesRevision");
        async move { polled >= polls + 4 }
    })
    .await;
    assert!(more_polls, "polling stopped");
    assert_eq!(setup.server.calls("DiscoverInstances"), full + 1);
}

#[tokio::test]
async fn throttling_keeps_the_set_and_recovery_follows() {
    let setup = start(3, &[], |_| {}).await;
    assert!(setup.known(3, Duration::from_secs(5)).await);

    // Cloud Map's throttling error (its docs); the SDK's generic one is ThrottlingException.
    setup.server.fail_next(2, 400, "RequestLimitExceeded");
    setup.server.fail_next(1, 400, "ThrottlingException");
    assert!(
        eventually(Duration::from_secs(3), || {
            let failing = setup.discovery_state() == "failing";
            async move { failing }
        })
        .await
    );
    assert_eq!(setup.upstream.known_endpoints(), 3, "the last set is kept");
    assert!(setup.call().await.is_ok());
    let metrics = setup.metrics();
    assert!(
        metrics.contains("result=\"throttled\""),
        "throttling is counted: {metrics}"
    );

    assert!(
        eventually(Duration::from_secs(5), || {
            let resolved = setup.discovery_state() == "resolved";
            async move { resolved }
        })
        .await,
        "recovered once the API answers"
    );
    assert_eq!(setup.upstream.known_endpoints(), 3);
}

#[tokio::test]
async fn a_failing_api_before_any_answer_says_why() {
    let server = CloudMapServer::start("internal", "name").await;
    server.fail_next(1000, 500, "InternalFailure");
    let mut registry = Registry::default();
    let target = "http://name.internal:9".parse().unwrap();
    let upstream = Upstream::start(target, options(&server), &mut registry).unwrap();
    // Until the first failure is recorded, a call finds discovery pending, not failing.
    assert!(
        eventually(Duration::from_secs(3), || {
            let report = serde_json::to_value(upstream.report()).unwrap();
            let failing = report["discovery"]["state"] == "failing";
            async move { failing }
        })
        .await,
        "the failing API was never reported"
    );

    let err = upstream
        .call(&crate::helpers::name_request(), crate::helpers::decode_name)
        .await
        .map(|_| ())
        .unwrap_err();

    let text = chain(&err);
    assert!(text.contains("InternalFailure"), "{text}");
}

#[tokio::test]
async fn a_health_flip_is_caught_by_the_periodic_full_call() {
    // No call times out, so none is made twice.
    let setup = start(3, &[], |options| {
        options.cloudmap.timeout = Duration::from_secs(60);
    })
    .await;
    assert!(setup.known(3, Duration::from_secs(5)).await);

    setup.server.set_healthy("n2", false);
    let full = setup.server.calls("DiscoverInstances");
    // The revision does not move on a health change. The first full call after it, due every
    // 500 ms, no longer lists n2, and its lookup applies the list before the next full call
    // begins. So the full calls are read first, then the set: n2 is gone by the time a second
    // full call has been seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let called = setup.server.calls("DiscoverInstances") - full;
        if setup.upstream.known_endpoints() == 2 {
            break;
        }
        assert!(called < 2, "n2 still known after {called} full calls");
        assert!(
            Instant::now() < deadline,
            "no full call after the health flip"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_missing_service_is_an_answer_with_no_instances() {
    let setup = start(2, &[], |options| {
        options.cloudmap.service = Some("other".into());
    })
    .await;
    assert!(
        eventually(Duration::from_secs(3), || {
            let state = setup.discovery_state();
            async move { state == "no_records" }
        })
        .await
    );

    let err = setup.call().await.unwrap_err();

    assert!(err.contains("not registered"), "{err}");
}

#[tokio::test]
async fn an_endpoint_override_is_called_without_the_host_prefix() {
    let setup = start(2, &[], |_| {}).await;
    assert!(setup.known(2, Duration::from_secs(5)).await);

    let hosts = setup.server.hosts();

    let expected = setup.server.addr.to_string();
    assert!(!hosts.is_empty());
    assert!(hosts.iter().all(|host| *host == expected), "{hosts:?}");
}

/// Waits until every endpoint has answered a probe or a call, so that all are in one tier.
async fn all_healthy(setup: &Setup, count: usize) -> bool {
    eventually(Duration::from_secs(5), || {
        let report = serde_json::to_value(setup.upstream.report()).unwrap();
        let healthy = report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|endpoint| endpoint["state"] == "healthy")
            .count();
        async move { healthy == count }
    })
    .await
}

#[tokio::test]
async fn three_zones_split_after_envoys_algorithm() {
    // 2, 3 and 4 endpoints in zones a, b, c; hello in a. Callers taken as spread evenly: a
    // keeps (2/9)/(1/3) = 2/3 of its calls; the rest goes where capacity is left over, c.
    let zones = ["a", "b", "b", "c", "c", "c", "a", "b", "c"];
    let setup = start(9, &zones, |options| {
        options.zone.local = Some("a".into());
    })
    .await;
    assert!(setup.known(9, Duration::from_secs(5)).await);
    assert!(all_healthy(&setup, 9).await);
    let zone_of: HashMap<String, &str> =
        (0..9).map(|i| (format!("n{}", i + 1), zones[i])).collect();

    let tally = setup.tally(600).await;

    let mut by_zone: HashMap<&str, usize> = HashMap::new();
    for (instance, count) in &tally {
        *by_zone.entry(zone_of[instance]).or_default() += count;
    }
    let share = |zone| *by_zone.get(zone).unwrap_or(&0) as f64 / 600.0;
    println!(
        "zone split: a {:.3} b {:.3} c {:.3}",
        share("a"),
        share("b"),
        share("c")
    );
    assert!((0.58..0.75).contains(&share("a")), "{by_zone:?}");
    assert_eq!(share("b"), 0.0, "{by_zone:?}");
    let metrics = setup.metrics();
    assert!(
        metrics.contains("hello_upstream_zone_picks_total{zone=\"local\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_even_spread_keeps_every_call_in_the_zone() {
    let zones = ["a", "b", "c"];
    let setup = start(6, &zones, |options| {
        options.zone.local = Some("b".into());
    })
    .await;
    assert!(setup.known(6, Duration::from_secs(5)).await);
    assert!(all_healthy(&setup, 6).await);

    let tally = setup.tally(100).await;

    // n2 and n5 are the two instances in b.
    let local: usize = ["n2", "n5"].iter().filter_map(|id| tally.get(*id)).sum();
    assert_eq!(local, 100, "{tally:?}");
}

#[tokio::test]
async fn a_query_pins_the_instances_of_one_family() {
    let server = CloudMapServer::start("internal", "name").await;
    let names = name_instances(3);
    server.register(&names[0].id, names[0].addr, None);
    server.register(&names[1].id, names[1].addr, None);
    server.register_family(&names[2].id, names[2].addr, None, "name-canary");
    let mut options = options(&server);
    options.cloudmap.query = [(
        "ECS_TASK_DEFINITION_FAMILY".to_owned(),
        "name-canary".to_owned(),
    )]
    .into();
    let target = "http://name.internal:9".parse().unwrap();
    let upstream = Upstream::start(target, options, &mut Registry::default()).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || {
            let known = upstream.known_endpoints();
            async move { known == 1 }
        })
        .await
    );

    let reply = upstream
        .call(&crate::helpers::name_request(), crate::helpers::decode_name)
        .await
        .unwrap();

    assert_eq!(reply.answer.instance, "n3");
}

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary, configured as in production: the SDK's standard variables only, the
/// service-specific endpoint variable among them, set on the child process alone.
#[tokio::test]
async fn the_binary_finds_the_api_through_the_standard_variables() {
    let server = CloudMapServer::start("internal", "name").await;
    let names = name_instances(2);
    for name in &names {
        server.register(&name.id, name.addr, None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _hello = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_hello"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("INSTANCE_ID", "h1")
            .env("RUST_LOG", "off")
            .env("DISCOVERY", "cloudmap")
            .env("NAME_SERVICE_URL", "http://name.internal:9")
            .env("AWS_ENDPOINT_URL_SERVICEDISCOVERY", server.endpoint())
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTESTTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/");

    let answered = eventually(Duration::from_secs(10), || async {
        match http.get(&url).send().await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    })
    .await;

    assert!(
        answered,
        "hello never answered; API calls: {:?}",
        server.hosts()
    );
    let expected = server.addr.to_string();
    assert!(server.hosts().iter().all(|host| *host == expected));
}
