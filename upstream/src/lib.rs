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
//! - [`Upstream::call`]: one call, with retries, ejection, hedging and the retry budget; the
//!   caller decodes the answer.
//! - [`Upstream::report`]: what the upstream knows now, for a debug route;
//!   [`Upstream::known_endpoints`], for readiness.
//! - [`Upstream::discover`]: the usable endpoints as a `tower::discover::Discover` stream of
//!   [`Change`]s, for HTTP/2 and gRPC clients (tonic's balanced channel, tower's p2c), with
//!   [`ProbeKind::Http2`] probes.
//! - The types these take and give: [`Target`], [`Options`] (with [`Source`], [`RecordKind`],
//!   [`TtlBounds`], [`RetryPolicy`], [`EjectionPolicy`], [`ProbePolicy`], [`HedgePolicy`],
//!   [`CloudMapOptions`] and [`ZonePolicy`]), [`Reply`], [`CallError`], [`Report`].
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use upstream::{Options, Upstream};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let target = "http://name.internal:3000".parse().map_err(anyhow::Error::msg)?;
//! let upstream = Upstream::start(target, Options::default(), &mut registry)?;
//! let reply = upstream.call(|body| std::str::from_utf8(body).map(str::to_owned)).await?;
//! println!("{} answered {}", reply.endpoint, reply.answer);
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
//! - `call`: one call made of attempts, the retry policy and budget, hedging, the errors.
//! - `discover`: the usable endpoints as a tower discover stream, for other clients' balancers.
//! - `select`: power of two choices, within the zone Envoy's zone-aware proportions prefer.
//! - `endpoints`: the endpoint set and its health: ejection, the refresher that keeps the set
//!   current from a discovery source (serve-stale), and the prober.
//! - `discovery`: the sources: DNS (A or SRV), Cloud Map's API, and stable membership over
//!   capped DNS answers.
//! - `transport`: each endpoint's connection pool and the HTTP/1.1 codec.
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

pub use call::{CallError, HedgePolicy, Reply, RetryPolicy};
pub use discovery::CloudMapOptions;
pub use endpoints::{EjectionPolicy, ProbeKind, ProbePolicy};
pub use front_door::{Report, Upstream};
pub use lookup::{RecordKind, TtlBounds};
pub use options::{Options, Source, Target, TargetHost};
pub use select::ZonePolicy;
pub use tower::discover::Change;
