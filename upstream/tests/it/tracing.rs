//! Trace headers per attempt, over sockets: every attempt of a call (each retry, each hedge)
//! carries the call's trace id with a parent id of its own, in `traceparent` and, with a Root,
//! in `X-Amzn-Trace-Id`; the answering attempt's parent id comes back in the reply.

use upstream::{Request, TraceContext};

use crate::helpers::{Act, Raw, discovered, echo, fixed, local, same_port};

const TRACE_ID: [u8; 16] = *b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36";
const ROOT: &str = "1-5759e988-bd862e3fe1be46a994272793";

#[tokio::test]
async fn two_attempts_of_a_call_carry_one_trace_id_and_parent_ids_of_their_own() {
    let listeners = same_port(2);
    let (upstream, _registry, _dns) = discovered(&listeners, |_| {}).await;
    let failing = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_vec();
    let raws: Vec<Raw> = listeners
        .into_iter()
        .map(|listener| {
            let failing = failing.clone();
            Raw::start(listener, move |_| Act::Answer(failing.clone()))
        })
        .collect();
    let trace = TraceContext::new(TRACE_ID, true)
        .unwrap()
        .with_amzn_root(ROOT)
        .unwrap();

    let err = upstream
        .send(&Request::get("/").unwrap().with_trace(trace))
        .await
        .unwrap_err();

    assert!(err.chain().contains("(2 attempts)"), "{}", err.chain());
    let seen: Vec<_> = raws.iter().flat_map(Raw::seen).collect();
    assert_eq!(seen.len(), 2);
    let mut parents = Vec::new();
    for request in &seen {
        let traceparent = request.header("traceparent").unwrap();
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(fields[..2], ["00", "4bf92f3577b34da6a3ce929d0e0e4736"]);
        assert_eq!(fields[3], "01");
        let parent = fields[2].to_owned();
        assert_eq!(
            request.header("x-amzn-trace-id").unwrap(),
            format!("Root={ROOT};Parent={parent};Sampled=1")
        );
        parents.push(parent);
    }
    assert_ne!(parents[0], parents[1]);
}

#[tokio::test]
async fn the_answering_attempts_parent_id_comes_back() {
    let addr = echo(local());
    let (upstream, _registry) = fixed(addr, |_| {});
    let trace = TraceContext::new(TRACE_ID, false).unwrap();

    let reply = upstream
        .send(&Request::get("/").unwrap().with_trace(trace))
        .await
        .unwrap();

    let echoed: serde_json::Value = serde_json::from_slice(reply.answer.body()).unwrap();
    let parent = reply.parent_id.unwrap().to_string();
    let sent = echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "traceparent")
        .unwrap()[1]
        .clone();
    assert_eq!(
        sent,
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{parent}-00")
    );
    assert!(
        !echoed.to_string().contains("x-amzn-trace-id"),
        "no Root, no Amazon header"
    );
}
