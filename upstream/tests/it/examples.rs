//! The examples run: the `call` command against an echo server (by address, and by a name
//! found through DNS with hello's variables), its JSON mode, its exit codes; the greeter's
//! route against a JSON instance.

use axum::body::{Body, to_bytes};
use axum::routing::get;
use serde_json::Value;
use tower::ServiceExt;

use crate::call_example;
use crate::greeter;
use crate::helpers::{dns_for, echo, fixed, local, same_port};

/// Runs the `call` example with `args` and the variables `vars`: exit code, stdout, stderr.
async fn call(args: &[&str], vars: &[(&str, &str)]) -> (u8, Vec<u8>, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = call_example::run(
        args.iter().map(|arg| (*arg).to_owned()),
        vars.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        &mut out,
        &mut err,
    )
    .await;
    (code, out, String::from_utf8(err).unwrap())
}

#[tokio::test]
async fn the_call_example_prints_the_body_alone_and_says_who_answered() {
    let addr = echo(local());
    let url = format!("http://{addr}/items/7?x=1");

    let (code, out, err) = call(&["-H", "x-tag: seven", &url], &[("REQUEST_TIMEOUT", "2s")]).await;

    assert_eq!(code, 0, "{err}");
    let echoed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(echoed["method"], "GET");
    assert_eq!(echoed["target"], "/items/7?x=1");
    assert!(
        echoed["headers"]
            .to_string()
            .contains(r#"["x-tag","seven"]"#),
        "{echoed}"
    );
    assert_eq!(err, format!("200 OK from {addr} after 1 attempt(s)\n"));
}

#[tokio::test]
async fn the_call_example_posts_json() {
    let addr = echo(local());

    let (code, out, err) = call(
        &[
            "--json",
            r#"{"sku":"a-1"}"#,
            &format!("http://{addr}/orders"),
        ],
        &[],
    )
    .await;

    assert_eq!(code, 0, "{err}");
    let echoed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], r#"{"sku":"a-1"}"#);
    let headers = echoed["headers"].to_string();
    assert!(
        headers.contains(r#"["content-type","application/json"]"#),
        "{headers}"
    );
    assert!(
        headers.contains(r#"["accept","application/json"]"#),
        "{headers}"
    );
}

#[tokio::test]
async fn the_call_example_finds_a_name_with_hellos_variables() {
    let mut listeners = same_port(1);
    let (dns, _) = dns_for(&listeners).await;
    let port = listeners[0].local_addr().unwrap().port();
    echo(listeners.remove(0));
    let dns_server = dns.addr().to_string();

    let (code, out, err) = call(
        &[
            "-X",
            "DELETE",
            &format!("http://svc.internal:{port}/things/1"),
        ],
        &[
            ("DNS_SERVER", &dns_server),
            ("MAX_ATTEMPTS", "2"),
            ("HEDGE", "false"),
        ],
    )
    .await;

    assert_eq!(code, 0, "{err}");
    let echoed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(echoed["method"], "DELETE");
    assert!(err.starts_with("200 OK from 127.0.0.11:"), "{err}");
}

#[tokio::test]
async fn bad_arguments_and_settings_exit_2_with_the_usage() {
    for (args, vars) in [
        (&["-X"][..], &[][..]),
        (&["--nope", "http://127.0.0.1:1/"], &[]),
        (&["-H", "no colon", "http://127.0.0.1:1/"], &[]),
        (&["-H", "connection: close", "http://127.0.0.1:1/"], &[]),
        (&["https://127.0.0.1:1/"], &[]),
        (&["http://127.0.0.1:1/"], &[("MAX_ATTEMPTS", "zero")]),
        (&["http://127.0.0.1:1/"], &[("DNS_MIN_TTL", "0s")]),
    ] {
        let (code, out, err) = call(args, vars).await;

        assert_eq!(code, 2, "{args:?} {vars:?}: {err}");
        assert!(out.is_empty());
        assert!(
            err.ends_with(&format!("{}\n", call_example::USAGE)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_failed_call_or_an_error_answer_exits_1() {
    let listener = local();
    let refused = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);

    let (code, out, err) = call(&[&refused], &[]).await;

    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("Connection refused"), "{err}");
    let addr = echo(local());
    let (code, out, err) = call(&[&format!("http://{addr}/status/404")], &[]).await;
    assert_eq!((code, out.as_slice()), (1, &b"status 404"[..]));
    assert!(err.starts_with("404 Not Found from"), "{err}");
}

#[tokio::test]
async fn the_greeter_greets_with_a_name_through_the_front_door() {
    let listener = tokio::net::TcpListener::from_std(local()).unwrap();
    let addr = listener.local_addr().unwrap();
    let name = axum::Router::new()
        .route("/", get(|| async { r#"{"name":"Ann","instance":"n1"}"# }))
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, name).await });
    let (upstream, _registry) = fixed(addr, |_| {});

    let response = greeter::router(upstream)
        .unwrap()
        .oneshot(
            axum::http::Request::get("/greet")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(body.as_ref(), b"Good day, Ann!\n");
}
