//! The `name` service: answers `GET /` with a random first name and the instance that chose
//! it, so a caller can see which instance it reached.
//!
//! # Layout
//!
//! - [`config`]: the settings, from flags or environment variables.
//! - `app`: the router and its handlers, including readiness that turns off while draining.
//! - `names`: the first names to choose from.
//! - [`run`]: serves on an already-bound listener until a shutdown future completes, then
//!   drains for `DRAIN_SECONDS` before closing.

pub mod config;

mod app;
mod names;
mod server;

pub use app::{AppState, app};
pub use config::Config;
pub use server::run;
