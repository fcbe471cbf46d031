//! The lookup seam: what a discovery source is to the refresher that schedules it. DNS and
//! Cloud Map's API are two implementations; the tests script a third.

use std::future::Future;

use super::{Answer, LookupError};

/// A source of full answers.
pub trait Lookup: Send + Sync + 'static {
    /// The name looked up, for logs.
    fn name(&self) -> &str;
    /// One lookup.
    fn lookup(&self) -> impl Future<Output = Result<Answer, LookupError>> + Send;
}
