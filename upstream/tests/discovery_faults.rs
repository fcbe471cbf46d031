//! Broken discovery answers are failed lookups, not "no instances": after good answers the
//! endpoint set is kept and calls go on; at start, discovery reports the failure and why.
//! Genuine negative answers still empty the set. With nothing to serve, lookups are retried at
//! the floor. Over sockets: a DNS responder that sends what a faulty server or resolver sends
//! (records for other names, records of other types, CNAME loops and endless chains, replies
//! to another question), a Cloud Map API that lists instances with no usable address, and
//! instances that answer HTTP.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

#[path = "support/raw_dns.rs"]
#[allow(dead_code)]
mod raw_dns;
#[path = "support/raw_http.rs"]
#[allow(dead_code)]
mod raw_http;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_servicediscovery::config::{Credentials, SharedCredentialsProvider};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use upstream::{CallError, CloudMapOptions, Options, RecordKind, Source, TtlBounds, Upstream};

use raw_dns::{
    RawDns, Reply, Transport, a, aaaa, asked_type, cname, question, reply_to, soa, srv, txt,
};
use raw_http::{Request, Response};

const SERVICE: &str = "name.internal.";

/// How the responder answers, given the instances' addresses and port.
type Script = Box<dyn Fn(&Message, Transport) -> Reply + Send + Sync>;
const TTL: u32 = 0;
const FLOOR: Duration = Duration::from_millis(100);
/// Long enough for a loaded machine; the lookups themselves take milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

// === The answers ===

/// A broken answer, and the words its failure is reported with.
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// NOERROR with A records for another name only.
    OtherNames,
    /// NOERROR with TXT and AAAA records for the name, no A.
    OtherTypes,
    /// The name is a CNAME of a name that is a CNAME of the name, in one answer.
    CnameLoop,
    /// Each name is a CNAME of a longer one, one per answer, never reaching records.
    EndlessChain,
    /// Over TCP (the UDP reply is truncated), a reply to another question that carries the
    /// name's A records: hickory's TCP client takes it.
    OtherQuestion,
}

impl Broken {
    const ALL: [Self; 5] = [
        Self::OtherNames,
        Self::OtherTypes,
        Self::CnameLoop,
        Self::EndlessChain,
        Self::OtherQuestion,
    ];

    fn reply(self, request: &Message, transport: Transport, ips: &[Ipv4Addr]) -> Reply {
        let mut reply = reply_to(request);
        let asked = question(request).name().to_ascii();
        match self {
            Self::OtherNames => {
                reply.add_answer(a("other.internal.", TTL, Ipv4Addr::new(10, 9, 9, 9)));
            }
            Self::OtherTypes => {
                reply.add_answers([txt(&asked, TTL), aaaa(&asked, TTL)]);
            }
            Self::CnameLoop => {
                reply.add_answers([
                    cname(&asked, TTL, "b.internal."),
                    cname("b.internal.", TTL, &asked),
                ]);
            }
            Self::EndlessChain => {
                reply.add_answer(cname(&asked, TTL, &format!("x{asked}")));
            }
            Self::OtherQuestion if transport == Transport::Udp => reply.metadata.truncation = true,
            Self::OtherQuestion => {
                reply.queries[0].set_name(raw_dns::name("other.internal."));
                reply.add_answers(ips.iter().map(|ip| a(&asked, TTL, *ip)));
            }
        }
        Reply::Message(reply)
    }

    /// What the failure says when `name.internal.` is asked for `record` records.
    fn reason(self, record: RecordKind) -> String {
        let asked = record.record_type();
        match self {
            Self::OtherNames => format!(
                "no {asked} record for name.internal. in an answer of 1 record: A other.internal."
            ),
            Self::OtherTypes => format!(
                "no {asked} record for name.internal. in an answer of 2 records: \
                 TXT name.internal., AAAA name.internal."
            ),
            Self::CnameLoop => "CNAME loop: name.internal. -> b.internal. -> name.internal.".into(),
            Self::EndlessChain => "CNAME chain of more than 8 names without records".into(),
            Self::OtherQuestion => {
                format!("the reply is to another question ({asked} other.internal.)")
            }
        }
    }

    /// What the failure says, in a form that holds for any name asked.
    fn reason_for_any_name(self) -> &'static str {
        match self {
            Self::OtherNames => "in an answer of 1 record: A other.internal.",
            Self::OtherTypes => "in an answer of 2 records: TXT",
            Self::CnameLoop => "CNAME loop: ",
            Self::EndlessChain => "CNAME chain of more than 8 names without records",
            Self::OtherQuestion => "the reply is to another question (A other.internal.)",
        }
    }

    /// What the failure says: about the name, or about an SRV target.
    fn expected(self, record: RecordKind, srv_targets_only: bool) -> Vec<String> {
        if srv_targets_only {
            vec!["SRV target i1".into(), self.reason_for_any_name().into()]
        } else {
            vec![self.reason(record)]
        }
    }
}

/// The instances' A records, and their addresses as SRV targets `i<n>.name.internal.` on
/// `port`; NODATA for anything else.
fn good(
    ips: &[Ipv4Addr],
    port: u16,
) -> impl Fn(&Message, Transport) -> Reply + Send + Sync + use<> {
    let ips = ips.to_vec();
    move |request, _| {
        let mut reply = reply_to(request);
        let asked = question(request).name().to_ascii();
        match asked_type(request) {
            RecordType::A if asked == SERVICE => {
                reply.add_answers(ips.iter().map(|ip| a(SERVICE, TTL, *ip)));
            }
            RecordType::A => match ips.iter().find(|ip| asked == target(**ip)) {
                Some(ip) => {
                    reply.add_answer(a(&asked, TTL, *ip));
                }
                None => {
                    reply.add_authority(soa("internal.", TTL));
                }
            },
            RecordType::SRV if asked == SERVICE => {
                reply.add_answers(ips.iter().map(|ip| srv(SERVICE, TTL, port, &target(*ip))));
            }
            _ => {
                reply.add_authority(soa("internal.", TTL));
            }
        }
        Reply::Message(reply)
    }
}

/// The SRV target of the instance at `ip`.
fn target(ip: Ipv4Addr) -> String {
    format!("i{}.{SERVICE}", ip.octets()[3])
}

/// `broken` answers to every question, or with `srv_targets_only` to the SRV targets' A
/// questions only; good answers to the rest.
fn broken(ips: &[Ipv4Addr], port: u16, broken: Broken, srv_targets_only: bool) -> Script {
    let good = good(ips, port);
    let ips = ips.to_vec();
    Box::new(move |request, transport| {
        let asked = question(request).name().to_ascii();
        if srv_targets_only && asked == SERVICE {
            good(request, transport)
        } else {
            broken.reply(request, transport, &ips)
        }
    })
}

// === The service under test ===

struct Setup {
    dns: RawDns,
    ips: Vec<Ipv4Addr>,
    port: u16,
    upstream: Upstream,
    registry: Registry,
}

/// Three instances, a responder answering with the script `answers` makes for them, and an
/// upstream discovering them by `record`, with a 100 ms floor and a ceiling of `max_ttl`.
async fn start(
    record: RecordKind,
    max_ttl: Duration,
    answers: impl FnOnce(&[Ipv4Addr], u16) -> Script,
) -> Setup {
    let (ips, port) = raw_http::instances(3).await;
    let script = answers(&ips, port);
    let dns = RawDns::start(move |request, transport| script(request, transport)).await;
    let options = Options {
        record,
        dns_server: Some(dns.addr()),
        dns_timeout: Duration::from_millis(500),
        ttl: TtlBounds {
            min: FLOOR,
            max: max_ttl,
        },
        ..Options::default()
    };
    let mut registry = Registry::default();
    let target = format!("http://name.internal:{port}").parse().unwrap();
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    Setup {
        dns,
        ips,
        port,
        upstream,
        registry,
    }
}

/// [`start`] with good answers.
async fn start_good(record: RecordKind) -> Setup {
    start(record, Duration::from_secs(1), |ips, port| {
        Box::new(good(ips, port))
    })
    .await
}

impl Setup {
    fn answer_with(&self, answers: impl FnOnce(&[Ipv4Addr], u16) -> Script) {
        let script = answers(&self.ips, self.port);
        self.dns
            .answer_with(move |request, transport| script(request, transport));
    }

    async fn call(&self) -> Result<String, CallError> {
        let reply = self
            .upstream
            .call(&get(), |answer| {
                std::str::from_utf8(answer.body()).map(str::to_owned)
            })
            .await?;
        Ok(reply.answer)
    }

    /// Lookups counted under `result` so far.
    fn refreshes(&self, result: &str) -> u64 {
        counter(
            &self.registry,
            &format!(r#"dns_refreshes_total{{result="{result}"}}"#),
        )
    }

    /// The discovery state and endpoints, as a debug route would show them.
    fn report(&self) -> String {
        format!("{:?}", self.upstream.report())
    }
}

/// The value of the counter line that starts with `series` in `registry`, 0 when absent.
fn counter(registry: &Registry, series: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Polls `condition` until it holds or `PATIENCE` passes.
async fn eventually<F: Future<Output = bool>>(mut condition: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Makes `count` calls; each must be answered by an instance.
async fn all_answered(setup: &Setup, count: usize) -> Result<(), String> {
    for n in 0..count {
        match setup.call().await {
            Ok(answer) if answer.starts_with('i') => {}
            other => return Err(format!("call {n}: {other:?}")),
        }
    }
    Ok(())
}

// === DNS: broken answers after good ones ===

/// Good answers, then `kind` ones: the set stays whole, calls are answered, and discovery
/// reports the failure with its reason.
async fn keeps_the_set(record: RecordKind, kind: Broken, srv_targets_only: bool) {
    let setup = start_good(record).await;
    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);

    setup.answer_with(|ips, port| broken(ips, port, kind, srv_targets_only));
    let counted = eventually(|| async { setup.refreshes("broken") >= 3 }).await;

    assert!(counted, "failed: {}", setup.refreshes("failed"));
    assert_eq!(setup.upstream.known_endpoints(), 3);
    assert_eq!(setup.refreshes("negative"), 0);
    all_answered(&setup, 20).await.unwrap();
    let report = setup.report();
    assert!(report.contains("Failing"), "{report}");
    for words in kind.expected(record, srv_targets_only) {
        assert!(report.contains(&words), "{report}");
    }
}

#[tokio::test]
async fn records_for_other_names_only_keep_the_set() {
    keeps_the_set(RecordKind::A, Broken::OtherNames, false).await;
}

#[tokio::test]
async fn records_of_other_types_only_keep_the_set() {
    keeps_the_set(RecordKind::A, Broken::OtherTypes, false).await;
}

#[tokio::test]
async fn a_cname_loop_keeps_the_set() {
    keeps_the_set(RecordKind::A, Broken::CnameLoop, false).await;
}

#[tokio::test]
async fn an_endless_cname_chain_keeps_the_set() {
    keeps_the_set(RecordKind::A, Broken::EndlessChain, false).await;
}

#[tokio::test]
async fn a_reply_to_another_question_keeps_the_set() {
    keeps_the_set(RecordKind::A, Broken::OtherQuestion, false).await;
}

#[tokio::test]
async fn broken_srv_answers_keep_the_set() {
    for kind in Broken::ALL {
        keeps_the_set(RecordKind::Srv, kind, false).await;
    }
}

#[tokio::test]
async fn broken_answers_for_srv_targets_keep_the_set() {
    for kind in [Broken::OtherNames, Broken::CnameLoop] {
        keeps_the_set(RecordKind::Srv, kind, true).await;
    }
}

// === DNS: broken answers from the start ===

/// `kind` answers from the start: no endpoints, and a call says that discovery fails, and
/// why; not that there are no records.
async fn fails_at_start(record: RecordKind, kind: Broken, srv_targets_only: bool) {
    let setup = start(record, Duration::from_secs(1), |ips, port| {
        broken(ips, port, kind, srv_targets_only)
    })
    .await;
    assert!(eventually(|| async { setup.refreshes("broken") >= 2 }).await);

    let err = setup.call().await.unwrap_err();

    assert_eq!(setup.upstream.known_endpoints(), 0);
    assert_eq!(err.kind(), "dns_failed", "{}", err.chain());
    for words in kind.expected(record, srv_targets_only) {
        assert!(err.chain().contains(&words), "{}", err.chain());
    }
    let report = setup.report();
    assert!(report.contains("Failing"), "{report}");
    assert!(!report.contains("NoRecords"), "{report}");
}

#[tokio::test]
async fn records_for_other_names_only_at_start_fail_with_the_reason() {
    fails_at_start(RecordKind::A, Broken::OtherNames, false).await;
}

#[tokio::test]
async fn records_of_other_types_only_at_start_fail_with_the_reason() {
    fails_at_start(RecordKind::A, Broken::OtherTypes, false).await;
}

#[tokio::test]
async fn a_cname_loop_at_start_fails_with_the_reason() {
    fails_at_start(RecordKind::A, Broken::CnameLoop, false).await;
}

#[tokio::test]
async fn an_endless_cname_chain_at_start_fails_with_the_reason() {
    fails_at_start(RecordKind::A, Broken::EndlessChain, false).await;
}

#[tokio::test]
async fn a_reply_to_another_question_at_start_fails_with_the_reason() {
    fails_at_start(RecordKind::A, Broken::OtherQuestion, false).await;
}

#[tokio::test]
async fn broken_srv_answers_at_start_fail_with_the_reason() {
    for kind in Broken::ALL {
        fails_at_start(RecordKind::Srv, kind, false).await;
    }
}

#[tokio::test]
async fn broken_answers_for_srv_targets_at_start_fail_with_the_reason() {
    fails_at_start(RecordKind::Srv, Broken::CnameLoop, true).await;
}

#[tokio::test]
async fn srv_records_with_port_zero_only_fail_with_the_reason() {
    let setup = start(RecordKind::Srv, Duration::from_secs(1), |ips, port| {
        let good = good(ips, port);
        let ips = ips.to_vec();
        Box::new(move |request, transport| match asked_type(request) {
            RecordType::SRV => {
                let mut reply = reply_to(request);
                reply.add_answers(ips.iter().map(|ip| srv(SERVICE, TTL, 0, &target(*ip))));
                Reply::Message(reply)
            }
            _ => good(request, transport),
        })
    })
    .await;
    assert!(eventually(|| async { setup.refreshes("broken") >= 2 }).await);

    let err = setup.call().await.unwrap_err();

    assert!(
        err.chain().contains("SRV records with port 0 only"),
        "{}",
        err.chain()
    );
}

// === DNS: what stays an answer ===

/// The records of other names beside the name's are left out, not called.
#[tokio::test]
async fn records_for_other_names_beside_the_name_are_left_out() {
    let setup = start(RecordKind::A, Duration::from_secs(1), |ips, port| {
        let good = good(ips, port);
        Box::new(move |request, transport| {
            let Reply::Message(mut reply) = good(request, transport) else {
                unreachable!("good answers are messages");
            };
            reply.add_answer(a("other.internal.", TTL, Ipv4Addr::new(127, 0, 0, 99)));
            Reply::Message(reply)
        })
    })
    .await;
    assert!(eventually(|| async { setup.refreshes("ok") >= 2 }).await);

    assert_eq!(setup.upstream.known_endpoints(), 3);
    assert!(!setup.report().contains("127.0.0.99"), "{}", setup.report());
}

/// NOERROR with an empty answer section and no SOA, the reply hickory's resolver cannot
/// tell from records for other names: no records, and the set empties.
#[tokio::test]
async fn an_empty_answer_after_good_ones_empties_the_set() {
    let setup = start_good(RecordKind::A).await;
    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);

    setup.answer_with(|_, _| Box::new(|request, _| Reply::Message(reply_to(request))));
    let emptied = eventually(|| async { setup.upstream.known_endpoints() == 0 }).await;

    assert!(emptied);
    let err = setup.call().await.unwrap_err();
    assert_eq!(err.kind(), "no_endpoints", "{}", err.chain());
    assert!(err.chain().contains("has no A records"), "{}", err.chain());
    assert_eq!(setup.refreshes("broken"), 0);
}

#[tokio::test]
async fn nxdomain_after_good_answers_empties_the_set() {
    let setup = start_good(RecordKind::A).await;
    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);

    setup.answer_with(|_, _| {
        Box::new(|request, _| {
            let mut reply = reply_to(request);
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_authority(soa("internal.", TTL));
            Reply::Message(reply)
        })
    });
    let emptied = eventually(|| async { setup.upstream.known_endpoints() == 0 }).await;

    assert!(emptied);
    let err = setup.call().await.unwrap_err();
    assert!(
        err.chain().contains("does not exist (NXDOMAIN)"),
        "{}",
        err.chain()
    );
}

/// A CNAME to a name that does not exist is an answer about the end of the chain.
#[tokio::test]
async fn a_cname_to_a_missing_name_empties_the_set() {
    let setup = start_good(RecordKind::A).await;
    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);

    setup.answer_with(|_, _| {
        Box::new(|request, _| {
            let mut reply = reply_to(request);
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_answer(cname(SERVICE, TTL, "gone.internal."));
            Reply::Message(reply)
        })
    });

    assert!(eventually(|| async { setup.upstream.known_endpoints() == 0 }).await);
}

/// A CNAME chain that ends in records, over two replies, is followed.
#[tokio::test]
async fn a_cname_chain_to_records_is_followed() {
    let setup = start(RecordKind::A, Duration::from_secs(1), |ips, _| {
        let ips = ips.to_vec();
        Box::new(move |request, _| {
            let mut reply = reply_to(request);
            if question(request).name().to_ascii() == SERVICE {
                reply.add_answer(cname(SERVICE, TTL, "b.internal."));
            } else {
                reply.add_answers(ips.iter().map(|ip| a("b.internal.", TTL, *ip)));
            }
            Reply::Message(reply)
        })
    })
    .await;

    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);
    all_answered(&setup, 5).await.unwrap();
}

// === DNS: nothing to serve ===

/// With nothing to serve, failures are retried at the floor, not on a backoff that has grown
/// meanwhile: ready within 2 s of DNS answering, after 5 s of SERVFAIL (a doubling backoff
/// from 100 ms would be at 3.2 s by then, with a 30 s ceiling).
#[tokio::test]
async fn with_nothing_to_serve_an_answer_is_seen_within_the_floor() {
    let setup = start(RecordKind::A, Duration::from_secs(30), |_, _| {
        Box::new(|request, _| {
            let mut reply = reply_to(request);
            reply.metadata.response_code = ResponseCode::ServFail;
            Reply::Message(reply)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failed = setup.refreshes("failed");

    setup.answer_with(|ips, port| Box::new(good(ips, port)));
    let back = Instant::now();
    while setup.upstream.known_endpoints() == 0 && back.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert!(failed >= 30, "one lookup per floor: {failed} in 5 s");
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}

// === DNS: good and broken answers in turn ===

/// The responder alternates good and broken answers at a TTL of 0 (a lookup per 100 ms
/// floor) while calls are made: every call is answered.
#[tokio::test]
async fn alternating_good_and_broken_answers_lose_no_call() {
    let setup = start(RecordKind::A, Duration::from_secs(1), |ips, port| {
        let good = good(ips, port);
        let ips = ips.to_vec();
        let asked = AtomicUsize::new(0);
        Box::new(move |request, transport| {
            let kinds = [Broken::OtherNames, Broken::CnameLoop];
            match asked.fetch_add(1, Ordering::SeqCst) % 4 {
                0 | 2 => good(request, transport),
                n => kinds[n / 2].reply(request, transport, &ips),
            }
        })
    })
    .await;
    assert!(eventually(|| async { setup.upstream.known_endpoints() == 3 }).await);

    let mut answered = 0;
    let started = Instant::now();
    for _ in 0..500 {
        if setup.call().await.is_ok() {
            answered += 1;
        }
        // Calls spread over about 3 s, so that lookups happen meanwhile.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let broken = setup.refreshes("broken");
    println!(
        "{answered} of 500 calls answered in {:?}, {broken} broken answers, {} good",
        started.elapsed(),
        setup.refreshes("ok")
    );

    assert_eq!(answered, 500);
    assert!(broken >= 5, "{broken}");
    assert_eq!(setup.refreshes("negative"), 0);
}

// === Cloud Map's API ===

/// A Cloud Map API that answers `DiscoverInstances` with the instances the test sets, as
/// JSON written by the test, and a new revision on every `DiscoverInstancesRevision`, so that
/// each poll lists the instances.
#[derive(Clone)]
struct CloudMapApi {
    endpoint: String,
    instances: Arc<Mutex<String>>,
}

impl CloudMapApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Self {
            endpoint: format!("http://{}", listener.local_addr().unwrap()),
            instances: Arc::new(Mutex::new("[]".into())),
        };
        let instances = Arc::clone(&api.instances);
        let revision = AtomicUsize::new(0);
        raw_http::serve(
            listener,
            Arc::new(move |request: &Request| {
                let target = request.header("x-amz-target").unwrap_or_default();
                let revision = revision.fetch_add(1, Ordering::SeqCst);
                let body = if target.ends_with(".DiscoverInstancesRevision") {
                    format!(r#"{{"InstancesRevision":{revision}}}"#)
                } else {
                    let instances = instances.lock().unwrap();
                    format!(r#"{{"Instances":{instances},"InstancesRevision":{revision}}}"#)
                };
                Response {
                    status: 200,
                    content_type: "application/x-amz-json-1.1",
                    body: body.into_bytes(),
                }
            }),
        );
        api
    }

    /// Lists instances with these `(id, attributes)`, attributes as a JSON object.
    fn list(&self, instances: &[(String, String)]) {
        let listed: Vec<String> = instances
            .iter()
            .map(|(id, attributes)| {
                format!(
                    r#"{{"InstanceId":"{id}","NamespaceName":"internal","ServiceName":"name","HealthStatus":"HEALTHY","Attributes":{attributes}}}"#
                )
            })
            .collect();
        *self.instances.lock().unwrap() = format!("[{}]", listed.join(","));
    }

    /// The SDK pointed at this API, with dummy credentials.
    fn sdk(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTESTTESTTESTTEST",
                "secret",
                None,
                None,
                "test",
            )))
            .build()
    }
}

/// The instances at `ips`, registered as ECS registers them, on `port`.
fn registered(ips: &[Ipv4Addr], port: u16) -> Vec<(String, String)> {
    ips.iter()
        .map(|ip| {
            let attributes =
                format!(r#"{{"AWS_INSTANCE_IPV4":"{ip}","AWS_INSTANCE_PORT":"{port}"}}"#);
            (format!("task-{}", ip.octets()[3]), attributes)
        })
        .collect()
}

/// Instances none of which can be called: no address, an address that is not IPv4, a port
/// that is not a port.
fn unusable(ips: &[Ipv4Addr]) -> Vec<(String, String)> {
    vec![
        (
            "task-a".into(),
            r#"{"AVAILABILITY_ZONE":"eu-west-1a"}"#.into(),
        ),
        ("task-b".into(), r#"{"AWS_INSTANCE_IPV4":"fd00::1"}"#.into()),
        (
            "task-c".into(),
            format!(
                r#"{{"AWS_INSTANCE_IPV4":"{}","AWS_INSTANCE_PORT":"0"}}"#,
                ips[0]
            ),
        ),
        (
            "task-d".into(),
            format!(
                r#"{{"AWS_INSTANCE_IPV4":"{}","AWS_INSTANCE_PORT":"70000"}}"#,
                ips[1]
            ),
        ),
    ]
}

const UNUSABLE: &str = "DiscoverInstances listed 4 instances, none with a usable address: \
    task-a: no AWS_INSTANCE_IPV4; task-b: AWS_INSTANCE_IPV4 \"fd00::1\" is not an IPv4 address; \
    task-c: AWS_INSTANCE_PORT \"0\" is not a port";

/// An upstream discovering `name.internal` through `api`, polling every 100 ms.
async fn start_cloudmap(api: &CloudMapApi, port: u16) -> (Upstream, Registry) {
    let options = Options {
        source: Source::CloudMap,
        cloudmap: CloudMapOptions {
            poll_interval: FLOOR,
            full_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            sdk: Some(api.sdk()),
            ..CloudMapOptions::default()
        },
        ..Options::default()
    };
    let mut registry = Registry::default();
    let target = format!("http://name.internal:{port}").parse().unwrap();
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    (upstream, registry)
}

async fn call(upstream: &Upstream) -> Result<String, CallError> {
    let reply = upstream
        .call(&get(), |answer| {
            std::str::from_utf8(answer.body()).map(str::to_owned)
        })
        .await?;
    Ok(reply.answer)
}

fn broken_lookups(registry: &Registry) -> u64 {
    counter(registry, r#"dns_refreshes_total{result="broken"}"#)
}

#[tokio::test]
async fn cloudmap_instances_without_a_usable_address_keep_the_set() {
    let (ips, port) = raw_http::instances(3).await;
    let api = CloudMapApi::start().await;
    api.list(&registered(&ips, port));
    let (upstream, registry) = start_cloudmap(&api, port).await;
    assert!(eventually(|| async { upstream.known_endpoints() == 3 }).await);

    api.list(&unusable(&ips));
    let counted = eventually(|| async { broken_lookups(&registry) >= 3 }).await;

    assert!(counted);
    assert_eq!(upstream.known_endpoints(), 3);
    for _ in 0..20 {
        call(&upstream).await.unwrap();
    }
    let report = format!("{:?}", upstream.report());
    // The report's debug form escapes the quotes: the reason up to the first.
    assert!(
        report.contains(&UNUSABLE[..UNUSABLE.find('"').unwrap()]),
        "{report}"
    );
}

#[tokio::test]
async fn cloudmap_instances_without_a_usable_address_at_start_fail_with_the_reason() {
    let (ips, port) = raw_http::instances(3).await;
    let api = CloudMapApi::start().await;
    api.list(&unusable(&ips));
    let (upstream, registry) = start_cloudmap(&api, port).await;
    assert!(eventually(|| async { broken_lookups(&registry) >= 2 }).await);

    let err = call(&upstream).await.unwrap_err();

    assert_eq!(err.kind(), "dns_failed", "{}", err.chain());
    assert!(err.chain().contains(UNUSABLE), "{}", err.chain());
}

#[tokio::test]
async fn cloudmap_listing_no_instances_empties_the_set() {
    let (ips, port) = raw_http::instances(3).await;
    let api = CloudMapApi::start().await;
    api.list(&registered(&ips, port));
    let (upstream, registry) = start_cloudmap(&api, port).await;
    assert!(eventually(|| async { upstream.known_endpoints() == 3 }).await);

    api.list(&[]);

    assert!(eventually(|| async { upstream.known_endpoints() == 0 }).await);
    let err = call(&upstream).await.unwrap_err();
    assert_eq!(err.kind(), "no_endpoints", "{}", err.chain());
    assert_eq!(broken_lookups(&registry), 0);
}

/// Some instances usable: those are the set, the others left out.
#[tokio::test]
async fn cloudmap_instances_without_a_usable_address_beside_good_ones_are_left_out() {
    let (ips, port) = raw_http::instances(3).await;
    let api = CloudMapApi::start().await;
    let mut listed = registered(&ips[..1], port);
    listed.extend(unusable(&ips));
    api.list(&listed);
    let (upstream, registry) = start_cloudmap(&api, port).await;

    assert!(eventually(|| async { upstream.known_endpoints() == 1 }).await);
    assert_eq!(
        call(&upstream).await.unwrap(),
        format!("i{}", ips[0].octets()[3])
    );
    assert_eq!(broken_lookups(&registry), 0);
}

/// `GET /`, what every call here asks.
fn get() -> upstream::Request {
    upstream::Request::get("/").unwrap()
}
