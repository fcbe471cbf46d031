//! Endpoints for tower balancers: the usable endpoints as a `tower::discover::Discover`
//! stream of inserts and removals, for tonic's balanced channel and tower's p2c, so that an
//! HTTP/2 or gRPC client gets the crate's discovery, probes and ejection without a second
//! transport. `usable` says which endpoints a balancer should hold; [`changes`] turns each
//! change of that set into inserts and removals. It reads the endpoint set and the zone
//! policy; it makes no call and probes nothing.

mod stream;
mod usable;

pub use stream::changes;
