//! Client-side discovery, balancing and calling of one upstream service, for services on ECS
//! (or anywhere) that find their peers through AWS Cloud Map: its DNS names
//! (`<service>.<namespace>`) or its `DiscoverInstances` API.
//!
//! # Front door
//!
//! - [`Upstream::start`]: takes a [`Target`] (where), [`Options`] (how) and a metrics
//!   [`Registry`](prometheus_client::registry::Registry); starts discovery and health probes
//!   in the background and returns the handle. The background tasks stop when the last clone
//!   of the handle drops, or at [`Upstream::shutdown`].
//! - [`Upstream::call`]: one call of a [`Request`] (any method, path and query, headers, a
//!   body), with retries and hedges where the request may be repeated, ejection and the retry
//!   budget; the caller's decoder reads the [`Answer`] where it lies. [`Upstream::send`]: the
//!   same, with the answer copied into an [`http::Response`].
//! - [`Upstream::report`]: what the upstream knows now, for a debug route;
//!   [`Upstream::known_endpoints`], for readiness.
//! - [`Upstream::discover`]: the usable endpoints as a `tower::discover::Discover` stream of
//!   [`Change`]s, for HTTP/2 and gRPC clients (tonic's balanced channel, tower's p2c), with
//!   [`ProbeKind::Http2`] probes.
//! - The types these take and give: [`Target`], [`Options`] (with [`Source`], [`RecordKind`],
//!   [`TtlBounds`], [`RetryPolicy`], [`StatusPolicy`], [`EjectionPolicy`], [`ProbePolicy`],
//!   [`HedgePolicy`], [`CloudMapOptions`] and [`ZonePolicy`]), [`Request`] (with
//!   [`TraceContext`]), [`Answer`], [`Reply`], [`CallError`], [`RequestError`], [`Report`].
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use upstream::{Options, Request, Upstream};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let target = "http://name.internal:3000".parse().map_err(anyhow::Error::msg)?;
//! let upstream = Upstream::start(target, Options::default(), &mut registry)?;
//!
//! // Decoded in place: the body is read where it lies in the connection's buffer.
//! let request = Request::get("/")?.with_header("accept", "application/json")?;
//! let reply = upstream
//!     .call(&request, |answer| std::str::from_utf8(answer.body()).map(str::to_owned))
//!     .await?;
//! println!("{} answered {}", reply.endpoint, reply.answer);
//!
//! // Or copied out: status, headers, body. A POST is never repeated once it may have
//! // reached a server, unless it carries an `Idempotency-Key`.
//! let order = Request::post("/orders", r#"{"sku":"a-1"}"#)?
//!     .with_header("content-type", "application/json")?;
//! let reply = upstream.send(&order).await?;
//! println!("{} {:?}", reply.answer.status(), reply.answer.body());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Floors, each importing only from those below it (tower's discover / load / balance split,
//! linkerd2-proxy's dns / pool / balance crates):
//!
//! - `front_door` and `options`: [`Upstream`] wires the parts and owns their tasks;
//!   [`Options`] gathers each part's settings.
//! - `call`: the request and its checks, one call made of attempts, the retry policy and
//!   budget, hedging, trace headers per attempt, the answer as decoders see it, the errors.
//! - `discover`: the usable endpoints as a tower discover stream, for other clients' balancers.
//! - `select`: power of two choices, within the zone Envoy's zone-aware proportions prefer.
//! - `endpoints`: the endpoint set and its health: ejection, the refresher that keeps the set
//!   current from a discovery source (serve-stale), and the prober.
//! - `discovery`: the sources: DNS (A or SRV), Cloud Map's API, and stable membership over
//!   capped DNS answers.
//! - `transport`: each endpoint's connection pool, the outbox that writes a turn's short
//!   requests together, and the HTTP/1.1 codec (request heads from checked parts, answers
//!   read in place).
//! - `lookup`: the shared words at the bottom: an answer, a lookup error, a record kind, the
//!   lookup seam.

mod call;
mod discover;
mod discovery;
mod endpoints;
mod front_door;
mod lookup;
mod options;
mod select;
mod transport;

pub use call::{
    Answer, CallError, DecodeError, HedgePolicy, MAX_REQUEST_HEAD, Reply, Request, RequestError,
    RetryPolicy, SpanId, StatusPolicy, TraceContext, TraceError,
};
pub use discovery::CloudMapOptions;
pub use endpoints::{EjectionPolicy, ProbeKind, ProbePolicy};
pub use front_door::{Report, Upstream};
pub use lookup::{RecordKind, TtlBounds};
pub use options::{Options, Source, Target, TargetHost};
pub use select::ZonePolicy;
pub use tower::discover::Change;

pub use bytes::Bytes;
/// The `http` crate the request and answer types come from (`Method`, `StatusCode`, header
/// names and values), re-exported so that callers use the same version.
pub use http;
