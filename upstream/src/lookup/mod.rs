//! The ground floor: the words every discovery source and the endpoint set share, and nothing
//! else. A source answers a [`Lookup`] with an [`Answer`] (every instance, its TTL) or a
//! [`LookupError`] (no instances, or no answer); [`RecordKind`] says which DNS records name
//! the instances; [`TtlBounds`] clamps how long an answer is kept. Nothing here imports
//! anything else of the crate (tower's `discover/mod.rs`; linkerd's `proxy/core` `resolve`).

mod answer;
mod error;
mod record;
mod seam;

pub use answer::{Answer, TtlBounds};
pub use error::LookupError;
pub use record::RecordKind;
pub use seam::Lookup;
