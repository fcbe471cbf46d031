//! Why an answer could not be read.

use super::MAX_HEAD_BYTES;

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The head is not HTTP/1.x.
    #[error("malformed answer head: {0}")]
    Head(&'static str),
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("answer head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The chunked framing is broken.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// The body is longer than the bound.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}
