//! The `hello` service: answers `GET /` with a greeting and a name from the `name` service,
//! which it finds through DNS (Cloud Map's `<service>.<namespace>`) and balances across
//! client-side.
//!
//! # Layout
//!
//! Discovery, endpoint state and picking are apart, after tower's discover / load / balance
//! split and linkerd's dns / pool crates:
//!
//! - [`dns`]: one lookup, a DNS name to a full snapshot of addresses and a TTL.
//! - [`refresh`]: the background task that looks up on the TTL's schedule, clamped to bounds,
//!   and keeps the last good answer when DNS fails.
//! - [`endpoints`]: the set the answers go into; per endpoint, load and health (outlier
//!   ejection).
//! - [`picker`]: power of two choices on requests in flight.
//! - [`retry`]: the retry budget.
//! - [`client`]: one call to `name`: attempts, timeouts, retries.
//! - `app`: the router; [`metrics`]: Prometheus counters; [`config`]: the settings.
//! - [`run`]: wires these together and serves on an already-bound listener.

pub mod client;
pub mod config;
pub mod dns;
pub mod endpoints;
pub mod metrics;
pub mod picker;
pub mod refresh;
pub mod retry;

mod app;
mod server;

pub use app::{AppState, app};
pub use config::Config;
pub use server::run;
