//! Discovery sources: each answers the [`crate::lookup::Lookup`] seam with every instance of
//! the service. [`Dns`] asks A or SRV records (Cloud Map's DNS, or any server); [`CloudMap`]
//! asks Cloud Map's `DiscoverInstances` API, polled by revision; [`Membership`] wraps a DNS
//! source whose answers are capped (MULTIVALUE's 8, WEIGHTED's 1) into a stable set. Each
//! tells an answer that there are no instances from an answer that cannot be right (DNS
//! responses are read in `response`). None keeps endpoint state or a schedule.

mod cloudmap;
mod dns;
mod membership;
mod response;

pub use cloudmap::{CloudMap, CloudMapOptions};
pub use dns::Dns;
pub use membership::Membership;
