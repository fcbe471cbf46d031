//! Calling: one call of a [`Request`] made of attempts on endpoints the picker chooses, each
//! with its own timeout inside the call's deadline and its own trace parent id; failed
//! attempts retried elsewhere under the [`RetryPolicy`] and its budget when the request may be
//! repeated; a slow attempt raced by a hedge after a delay drawn from recent latency; answers
//! judged by status ([`StatusPolicy`]) and decoded in place ([`Answer`]); errors that keep
//! their causes. Each part registers its own counters.

mod answer;
mod attempt;
mod caller;
mod deadline;
mod error;
mod hedge;
mod latency;
mod metrics;
mod request;
mod retry;
mod status;
mod trace;

pub use answer::Answer;
pub use caller::{CallOptions, Caller, Reply};
pub use error::{CallError, DecodeError};
pub use latency::HedgePolicy;
pub use request::{MAX_REQUEST_HEAD, Request, RequestError};
pub use retry::RetryPolicy;
pub use status::StatusPolicy;
pub use trace::{SpanId, TraceContext, TraceError};
