//! hello's answers, through the router alone (`oneshot`, no socket in front): the success
//! JSON, and each kind of 503 as text and as JSON.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use hello::{AppState, app};
use prometheus_client::registry::Registry;
use tower::ServiceExt;
use upstream::{Options, Target, Upstream};

use crate::dns_server::{DnsServer, Mode};
use crate::helpers::{NameInstance, eventually};

/// Starts an upstream for `target` asking `dns`, and waits until its discovery state is
/// `state`.
async fn upstream(target: &str, dns: Option<&DnsServer>, state: &str) -> AppState {
    let options = Options {
        dns_server: dns.map(DnsServer::addr),
        ..Options::default()
    };
    let target: Target = target.parse().unwrap();
    let mut registry = Registry::with_prefix("hello");
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    let reached = eventually(Duration::from_secs(5), || {
        let report = serde_json::to_value(upstream.report()).unwrap();
        async move { report["discovery"]["state"] == state }
    })
    .await;
    assert!(reached, "discovery never reached {state}");
    AppState::new("h1", upstream, registry)
}

/// GETs `/`, as JSON when `json`; returns status and body.
async fn get(state: &AppState, json: bool) -> (u16, String) {
    let mut request = Request::get("/");
    if json {
        request = request.header("accept", "application/json");
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Checks a 503 of `kind` in both forms: the text names the service and says `why`; the
/// JSON has the kind, the service and the same message; both carry a trace id.
async fn assert_unavailable(state: &AppState, kind: &str, why: &str) {
    let (status, text) = get(state, false).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("name.internal") || text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(text.contains(why), "{text}");

    let (status, body) = get(state, true).await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], kind, "{body}");
    let (message, trace) = text.trim_end().split_once('\n').unwrap();
    assert_eq!(json["message"].as_str().unwrap(), message, "{body}");
    assert!(json["service"].is_string(), "{body}");
    // Each answer names its own request's trace, for the user to quote.
    let (text_trace, json_trace) = (trace.strip_prefix("trace_id: "), json["trace_id"].as_str());
    assert!(text_trace.is_some_and(|id| id.len() == 32), "{text}");
    assert!(
        json_trace.is_some_and(|id| id.len() == 32 && Some(id) != text_trace),
        "{body}"
    );
}

#[tokio::test]
async fn success_json_names_both_instances_the_endpoint_and_the_attempts() {
    let name = NameInstance::start("n1", "127.0.0.1:0".parse().unwrap());
    let state = upstream(&format!("http://{}", name.addr), None, "fixed").await;

    let (status, body) = get(&state, true).await;

    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["hello_instance"], "h1");
    assert_eq!(json["name_instance"], "n1");
    assert_eq!(json["endpoint"], name.addr.to_string());
    assert_eq!(json["attempts"], 1);
    let greeting = json["greeting"].as_str().unwrap();
    assert_eq!(
        greeting,
        format!(
            "Hello (from h1) {} (from n1)",
            json["name"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn no_records_is_a_503_of_kind_no_endpoints() {
    let dns = DnsServer::start(1).await;
    let state = upstream("http://name.internal:3000", Some(&dns), "no_records").await;
    assert_unavailable(&state, "no_endpoints", "NXDOMAIN").await;
}

#[tokio::test]
async fn a_failing_dns_with_nothing_known_is_a_503_of_kind_dns_failed() {
    let dns = DnsServer::start(1).await;
    dns.set_mode(Mode::ServFail);
    let state = upstream("http://name.internal:3000", Some(&dns), "failing").await;
    assert_unavailable(&state, "dns_failed", "DNS lookup of name.internal failed").await;
}

#[tokio::test]
async fn every_attempt_failing_is_a_503_of_kind_all_attempts_failed() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let state = upstream(&format!("http://{addr}"), None, "fixed").await;
    assert_unavailable(&state, "all_attempts_failed", &addr.to_string()).await;
}
