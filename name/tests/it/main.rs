//! `name` over sockets: what happens to requests at shutdown, in-process, and the drain of the
//! real binary after SIGTERM. One test binary, one module per concern.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

mod support;

mod drain;
mod shutdown;
