//! hello against a real DNS server and real `name` instances, over sockets: discovery,
//! balancing, failover. One test binary, one module per concern.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

mod dns_server;
mod helpers;

mod balancing;
mod config;
mod discovery;
mod failover;
