//! Selection: which endpoint the next attempt goes to. [`pick`] is power of two choices on
//! requests in flight, with up to two more pairs while the winner is busy, within the best
//! tier of health; [`ZoneRouting`] first chooses the zone to draw from, in Envoy's zone-aware
//! proportions, when zones are known.

mod p2c;
mod zone;

pub use p2c::pick;
pub use zone::{ZonePolicy, ZoneRouting};
