//! Transport: each endpoint's HTTP/1.1 connections ([`Pool`]) and the wire format they speak
//! ([`http1`]). It knows addresses and bytes, nothing of discovery, health or retries.

pub mod http1;
mod pool;

pub use pool::{Exchange, Pool, PoolError, PoolOptions};
