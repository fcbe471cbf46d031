//! The endpoint set and its health: what is known now about each instance, and the two
//! background tasks that keep it current. [`Refresher`] asks a discovery source on the TTL's
//! schedule and applies each full answer (serve-stale when a lookup fails); [`Prober`] checks
//! new, ejected and failing endpoints off the request path. Ejection follows Envoy's outlier
//! detection ([`EjectionPolicy`]). Each part registers its own counters.

mod ejection;
mod endpoint;
mod probe;
mod refresh;
mod report;
mod set;

pub use ejection::{EjectionPolicy, Probed, Recorded};
pub use endpoint::{Endpoint, Requests, Tier};
pub use probe::{ProbeKind, ProbePolicy, Prober};
pub use refresh::{RefreshMetrics, Refresher};
pub use report::EndpointReport;
#[cfg(test)]
pub use report::EndpointState;
pub use set::{Cause, Discovery, EndpointSet, SetWatch, Snapshot};
