//! Calling: one call made of attempts on endpoints the picker chooses, each with its own
//! timeout inside the call's deadline; failed attempts retried elsewhere under the
//! [`RetryPolicy`] and its budget; a slow attempt raced by a hedge after a delay drawn from
//! recent latency; errors that keep their causes. Each part registers its own counters.

mod attempt;
mod caller;
mod deadline;
mod error;
mod hedge;
mod latency;
mod metrics;
mod retry;

pub use caller::{CallOptions, Caller, Reply};
pub use error::{CallError, DecodeError};
pub use latency::HedgePolicy;
pub use retry::RetryPolicy;
