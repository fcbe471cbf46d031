//! Plumbing that the `name` and `hello` services share, so each service's own crate holds only
//! what makes it that service.
//!
//! # Layout
//!
//! - [`config`]: where a service listens, its instance identity, the `healthcheck` subcommand,
//!   and the parsing that turns a bad variable into one line naming it.
//! - [`telemetry`]: the `tracing` subscriber (JSON off a terminal, `RUST_LOG` respected).
//! - [`identity`]: the instance name, from `INSTANCE_ID`, the ECS task metadata endpoint, or the
//!   hostname.
//! - [`shutdown`]: SIGTERM and Ctrl-C as one future.
//! - [`serve`]: an axum server with request tracing and graceful shutdown.
//! - [`healthcheck`]: the client side of the `healthcheck` subcommand.
//! - [`main_loop`]: the `main` both binaries share.
//! - [`answer`]: the `name` service's JSON answer, written by one service and read by the other.

pub mod answer;
pub mod config;
pub mod healthcheck;
pub mod identity;
pub mod main_loop;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use answer::NameAnswer;
pub use config::{Cli, Command, DEFAULT_PORT, Listen, ServiceConfig, parse_args};
pub use identity::{Identity, identify, instance_id};
pub use serve::{ConnectionMetrics, Limits, serve, wants_json};
