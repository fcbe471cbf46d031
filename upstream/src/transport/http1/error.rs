//! Why an answer could not be read.

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The head is not HTTP/1.x.
    #[error("malformed answer head: {0}")]
    Head(&'static str),
    /// The head (interim heads included) is longer than this bound,
    /// [`MAX_HEAD_BYTES`](super::MAX_HEAD_BYTES).
    #[error("answer head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The chunked framing is broken.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// The body is longer than the bound.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}
