//! The upstream crate over sockets, as any service uses it: requests of every shape reaching
//! small HTTP servers of the tests' own, answers coming back, what is and is not repeated,
//! refusals before anything is sent, discovery's first answer awaited, trace headers per
//! attempt, failures that say why, and the examples run. One test binary, one module per
//! concern; `cargo test -p upstream` runs it alone.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

#[path = "../support/cloudmap_server.rs"]
#[allow(dead_code)]
mod cloudmap_server;
#[path = "../support/dns_server.rs"]
#[allow(dead_code)]
mod dns_server;
mod helpers;
#[path = "../support/loopback.rs"]
mod loopback;

// The examples, compiled into the tests so that they run them.
#[path = "../../examples/call.rs"]
#[allow(dead_code)]
mod call_example;
#[path = "../../examples/greeter.rs"]
#[allow(dead_code)]
mod greeter;

mod discovery;
mod errors;
mod examples;
mod requests;
mod rotation;
mod safety;
mod tracing;
