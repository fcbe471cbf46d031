//! Transport: each endpoint's HTTP/1.1 connections ([`Pool`]), the [`Outbox`] where short
//! requests wait to leave with the turn's others, and the wire format they speak ([`http1`]).
//! It knows addresses and bytes, nothing of discovery, health or retries.

pub mod http1;
mod outbox;
mod pool;

pub use outbox::Outbox;
pub use pool::{Exchange, Pool, PoolError, PoolOptions};
