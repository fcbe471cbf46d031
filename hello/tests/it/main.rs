//! hello against a real DNS server and real `name` instances, over sockets: discovery,
//! balancing, failover. One test binary, one module per concern.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

// The test DNS server and the fake Cloud Map API, one copy shared with the upstream crate's
// tests.
#[path = "../../../upstream/tests/support/cloudmap_server.rs"]
mod cloudmap_server;
#[path = "../../../upstream/tests/support/dns_server.rs"]
mod dns_server;
mod emf_spec;
mod helpers;
#[path = "../../../upstream/tests/support/loopback.rs"]
mod loopback;
mod processes;

// The upstream crate's `greeter` example, compiled into the tests so that they run it.
#[path = "../../../upstream/examples/greeter.rs"]
#[allow(dead_code)]
mod greeter;

mod balancing;
mod broken_upstreams;
mod cloudmap;
mod config;
mod connection_limit;
mod discovery;
mod failover;
mod front_door;
mod hostile;
mod membership;
mod observability;
mod responses;
mod shutdown;
mod wire;
