//! The `hello` service: answers `GET /` with a greeting and a name from the `name` service,
//! which it finds through DNS (Cloud Map's `<service>.<namespace>`) or Cloud Map's discovery
//! API, and balances across client-side.
//!
//! # Layout
//!
//! - The `upstream` crate does discovery, balancing and calling, behind one front door
//!   (`upstream::Upstream`); any service can depend on it.
//! - [`config`]: the settings, flags and variables, translated into the upstream's options.
//! - `app`: the router and handlers; `server`: [`run`], which wires the two and serves on an
//!   already-bound listener.
//! - `emf`: hello's own metrics in the CloudWatch EMF lines (the upstream's counters).

pub mod config;

mod app;
mod emf;
mod server;

pub use app::{AppState, app};
pub use config::Config;
pub use server::run;
