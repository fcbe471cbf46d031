//! HTTP/1.1 on the wire for the upstream's calls, without I/O (after h11 and Pingora's
//! HTTP/1 codec): the request heads, written from checked parts, and the reading of an answer:
//! its head (status, framing, whether the connection may be reused, `Retry-After`), its body
//! up to a bound, chunks joined in place, and its header fields read back when asked.
//! [`super::Pool`] feeds it the bytes.
//!
//! The answer's framing follows RFC 9112 section 6.3
//! (<https://www.rfc-editor.org/rfc/rfc9112#section-6.3>): no body for 1xx, 204 and 304 (and
//! for any answer to `HEAD`); `Transfer-Encoding` over `Content-Length`; chunked when it is
//! the final coding, else until the connection closes; `Content-Length` values that disagree
//! are an error, and so is a transfer coding in HTTP/1.0 (section 6.1); neither, and the body
//! runs to the close. A connection is reused only when the answer was HTTP/1.1 without
//! `Connection: close` (or HTTP/1.0 with `keep-alive` and no `close`), did not carry both
//! `Transfer-Encoding` and `Content-Length`, its length was known, and nothing followed it.

mod chunked;
mod error;
mod fields;
mod head;
mod request;

pub use chunked::Dechunker;
pub use error::WireError;
pub use fields::visit_fields;
pub use head::{Framing, Head, MAX_HEAD_BYTES, Parsed, parse_head};
pub use request::{
    AttemptFields, Outgoing, field_line, is_field_value, is_origin_form, is_token, request_line,
    write_head,
};

#[cfg(test)]
mod fuzz;
