//! What a user sees on AWS, from the real binaries: one trace id per request in both
//! services' logs, the trace id in hello's 503 body, and EMF metric lines that follow the
//! specification and name exactly the metrics of `infra/emf-metrics.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::emf_spec::validate;
use crate::processes::{Process, answered_trace, get, refused};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const ALB_HEADER: &str =
    "Self=1-67891233-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678";
const ALB_ROOT: &str = "1-67891233-abcdef012345678912345678";
const ALB_TRACE: &str = "67891233abcdef012345678912345678";

/// A request followed through the services.
struct Followed {
    trace_id: String,
    hello_line: Value,
    name_line: Value,
}

/// Sends `GET /` with `headers` to hello and finds both services' access lines by the trace
/// id hello answered with: hello's call to name carries the trace on.
async fn follow(hello: &Process, name: &Process, headers: &[(&str, &str)]) -> Followed {
    let (status, answered, body) = get(hello.addr, "/", headers).await;
    assert_eq!(status, 200, "{body}");
    let trace_id = answered_trace(&answered);
    let hello_line = hello.access_line(&trace_id);
    let name_line = name.access_line(&trace_id);
    Followed {
        trace_id,
        hello_line,
        name_line,
    }
}

/// Checks an access line's common fields.
fn assert_access(line: &Value, status: u16) {
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/", "{line}");
    assert_eq!(line["status"], status, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert_eq!(line["target"], "common::request_log", "{line}");
}

/// Checks hello's access line of an answered request: the endpoint that answered, in one
/// attempt.
fn assert_hello_answered(line: &Value, name: SocketAddr) {
    assert_access(line, 200);
    assert_eq!(line["endpoint"], name.to_string(), "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert!(line.get("error").is_none(), "{line}");
}

fn pair() -> (Process, Process) {
    let name = Process::name(&[]);
    let hello = Process::hello(name.addr, &[]);
    (hello, name)
}

#[tokio::test]
async fn a_w3c_traceparent_names_the_request_in_both_services() {
    let (hello, name) = pair();

    let followed = follow(&hello, &name, &[("traceparent", TRACEPARENT)]).await;

    assert_eq!(followed.trace_id, TRACE);
    assert_hello_answered(&followed.hello_line, name.addr);
    assert_access(&followed.name_line, 200);
    assert_eq!(followed.name_line["trace_id"], TRACE);
    assert!(followed.hello_line.get("amzn_trace_id").is_none());
}

#[tokio::test]
async fn the_albs_trace_header_names_the_request_by_its_root() {
    let (hello, name) = pair();

    let followed = follow(&hello, &name, &[("x-amzn-trace-id", ALB_HEADER)]).await;

    assert_eq!(followed.trace_id, ALB_TRACE);
    assert_hello_answered(&followed.hello_line, name.addr);
    for line in [&followed.hello_line, &followed.name_line] {
        assert_eq!(line["trace_id"], ALB_TRACE, "{line}");
        assert_eq!(line["amzn_trace_id"], ALB_ROOT, "{line}");
    }
}

#[tokio::test]
async fn a_request_with_no_trace_gets_a_new_one() {
    let (hello, name) = pair();

    let first = follow(&hello, &name, &[]).await;
    let second = follow(&hello, &name, &[]).await;

    assert_ne!(first.trace_id, second.trace_id);
    for followed in [&first, &second] {
        assert_eq!(followed.trace_id.len(), 32);
        assert!(
            followed
                .trace_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_hello_answered(&followed.hello_line, name.addr);
        assert_eq!(followed.hello_line["trace_id"], followed.trace_id.as_str());
        assert!(followed.hello_line.get("amzn_trace_id").is_none());
    }
}

#[tokio::test]
async fn malformed_trace_headers_start_a_new_trace_and_are_never_repeated() {
    let (hello, name) = pair();
    let traceparent = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let amzn = "Root=1-67891233-<script>alert(1)</script>";

    let followed = follow(
        &hello,
        &name,
        &[("traceparent", traceparent), ("x-amzn-trace-id", amzn)],
    )
    .await;

    assert_ne!(followed.trace_id.to_lowercase(), TRACE);
    assert_hello_answered(&followed.hello_line, name.addr);
    for process in [&hello, &name] {
        let logs = process.lines().join("\n");
        assert!(
            !logs.contains("4BF92F35") && !logs.contains("script"),
            "{logs}"
        );
    }
}

#[tokio::test]
async fn a_503_names_its_trace_in_the_body_and_in_every_line_it_logged() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let hello = Process::hello(nobody, &[("ACCESS_LOG", "errors")]);

    let (status, answered, body) = get(
        hello.addr,
        "/",
        &[("traceparent", TRACEPARENT), ("accept", "application/json")],
    )
    .await;
    let (_, _, text) = get(hello.addr, "/", &[]).await;
    let (ok, _, _) = get(hello.addr, "/healthz", &[]).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(answered_trace(&answered), TRACE);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["trace_id"], TRACE);
    assert_eq!(json["error"], "all_attempts_failed");
    assert!(json["message"].is_string() && json["service"].is_string());
    assert!(
        text.lines().any(|line| line.starts_with("trace_id: ")),
        "{text}"
    );
    let access = hello.access_line(TRACE);
    assert_eq!(access["status"], 503);
    assert_eq!(access["error"], "all_attempts_failed");
    let lines = hello.json();
    let cause = lines
        .iter()
        .find(|line| line["message"] == "answered with an error")
        .unwrap();
    assert_eq!(cause["trace_id"], TRACE, "{cause}");
    // ACCESS_LOG=errors: the 200 of /healthz has no line.
    assert_eq!(ok, 200);
    assert!(lines.iter().all(|line| line["path"] != "/healthz"));
}

// === EMF ===

/// The catalogue the dashboard and alarms are built from.
fn catalogue() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/emf-metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The EMF lines among `lines`, each checked against the specification and in `namespace`;
/// every line is either a log line or an EMF line, never both.
fn emf_lines(lines: &[Value], namespace: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| {
            let emf = line.get("_aws").is_some();
            assert!(emf != line.get("level").is_some(), "mixed line: {line}");
            emf
        })
        .map(|line| {
            let declared =
                validate(&line.to_string()).unwrap_or_else(|err| panic!("{err}: {line}"));
            assert_eq!(declared.namespaces, [namespace]);
            line.clone()
        })
        .collect()
}

/// Every metric a service's EMF lines declare, with its unit.
fn declared(lines: &[Value]) -> BTreeMap<String, String> {
    lines
        .iter()
        .flat_map(|line| validate(&line.to_string()).unwrap().metrics)
        .collect()
}

fn total(lines: &[Value], metric: &str) -> u64 {
    lines.iter().filter_map(|line| line[metric].as_u64()).sum()
}

#[tokio::test]
async fn emf_lines_follow_the_spec_and_name_the_catalogues_metrics() {
    let emf = [
        ("METRICS_EMF_INTERVAL", "1s"),
        ("METRICS_EMF_NAMESPACE", "HelloName/test"),
    ];
    let name = Process::name(&emf);
    let hello = Process::hello(name.addr, &emf);

    for _ in 0..5 {
        assert_eq!(get(hello.addr, "/", &[]).await.0, 200);
    }
    assert_eq!(get(hello.addr, "/nowhere", &[]).await.0, 404);
    assert_eq!(get(hello.addr, "/healthz", &[]).await.0, 200);
    // A line of a whole interval, not only the last one written at exit.
    assert!(
        hello
            .wait_for(|line| line["Requests"].as_u64().is_some_and(|n| n > 0))
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hello_lines = emf_lines(&hello.stop(), "HelloName/test");
    let name_lines = emf_lines(&name.stop(), "HelloName/test");

    let catalogue = catalogue();
    let prefix = catalogue["namespace_prefix"].as_str().unwrap();
    assert!("HelloName/test".starts_with(prefix));
    for (service, lines) in [("hello", &hello_lines), ("name", &name_lines)] {
        assert!(lines.len() >= 2, "{service}: {lines:?}");
        let expected: BTreeMap<String, String> = catalogue["services"][service]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().into(),
                    m["unit"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(declared(lines), expected, "{service}");
        for line in lines.iter() {
            assert_eq!(line["Service"], service);
            let sets = &line["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
            assert_eq!(sets, &catalogue["dimensions"]);
            assert!(line.get("Zone").is_none(), "no zone off ECS: {line}");
        }
    }
    // The counts add up over the lines: five answers and a 404; probes are not requests.
    assert_eq!(total(&hello_lines, "Requests"), 6);
    assert_eq!(total(&hello_lines, "Requests4xx"), 1);
    assert_eq!(total(&hello_lines, "Requests5xx"), 0);
    assert_eq!(total(&hello_lines, "AttemptsOk"), 5);
    assert_eq!(total(&name_lines, "Requests"), 5);
    let latencies: u64 = hello_lines
        .iter()
        .filter_map(|line| line["Latency"]["Counts"].as_array())
        .flatten()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(latencies, 6);
    let last = hello_lines.last().unwrap();
    assert_eq!(last["EndpointsKnown"], 1);
    assert_eq!(last["DiscoveryFailing"], 0);
}

#[tokio::test]
async fn emf_lines_are_off_by_default_and_on_every_minute_on_ecs() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metadata = format!("http://{}/v4/none", closed.local_addr().unwrap());
    drop(closed);

    let local = Process::name(&[]);
    let ecs = Process::name(&[("ECS_CONTAINER_METADATA_URI_V4", &metadata)]);

    let started = ecs
        .wait_for(|line| line["message"] == "writing CloudWatch EMF metrics to stdout")
        .unwrap();
    assert_eq!(started["interval"], "60s");
    assert_eq!(started["namespace"], "HelloName");
    let local_lines = local.stop();
    assert!(local_lines.iter().all(|line| line.get("_aws").is_none()));
    assert!(
        local_lines
            .iter()
            .all(|line| line["message"] != "writing CloudWatch EMF metrics to stdout")
    );
    // Stopped, the ECS one writes its partial minute.
    assert_eq!(emf_lines(&ecs.stop(), "HelloName").len(), 1);
}

#[test]
fn bad_reporting_settings_stop_either_service_with_one_line() {
    for binary in ["hello", "name"] {
        for (variable, value) in [
            ("ACCESS_LOG", "verbose"),
            ("METRICS_EMF_INTERVAL", "500ms"),
            ("METRICS_EMF_INTERVAL", "soon"),
            ("METRICS_EMF_NAMESPACE", "AWS/ECS"),
            ("METRICS_EMF_NAMESPACE", ""),
        ] {
            let (code, stderr) = refused(binary, &[(variable, value)]);
            assert_eq!(code, Some(2), "{binary} {variable}={value}: {stderr}");
            assert_eq!(
                stderr.lines().count(),
                1,
                "{binary} {variable}={value}: {stderr}"
            );
            assert!(
                stderr.contains(variable),
                "{binary} {variable}={value}: {stderr}"
            );
        }
    }
    let (_, stderr) = refused("name", &[("ACCESS_LOG", "verbose")]);
    assert!(stderr.contains("all, errors, off"), "{stderr}");
}

/// The set of metric names in the catalogue is the spec's: 18 for hello, 4 for name.
#[test]
fn the_catalogue_has_22_metrics() {
    let catalogue = catalogue();
    let count = |service: &str| {
        catalogue["services"][service]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert_eq!((count("hello"), count("name")), (18, 4));
}
