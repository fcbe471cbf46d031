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
//! - [`trace`]: the trace context of a request: W3C `traceparent` and the ALB's
//!   `X-Amzn-Trace-Id` read, started when absent, written for calls onward.
//! - [`request_log`]: the layer around both services' routes: the request's trace for every
//!   log line, the access-log line, the request counts.
//! - [`emf`]: CloudWatch metrics as Embedded Metric Format lines on stdout.

pub mod answer;
pub mod config;
pub mod emf;
pub mod healthcheck;
pub mod identity;
pub mod main_loop;
pub mod request_log;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use answer::NameAnswer;
pub use config::{Cli, Command, DEFAULT_PORT, Listen, ServiceConfig, Telemetry, parse_args};
pub use identity::{Identity, identify, instance_id};
pub use request_log::{AccessLog, RequestLog};
pub use serve::{ConnectionMetrics, Limits, serve, wants_json};
pub use telemetry::Reporting;
pub use trace::TraceContext;
