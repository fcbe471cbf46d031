//! An answer as the caller's decoder sees it: status, body and header fields where they lie in
//! the connection's buffer, read in place. Header fields are parsed only when asked for; an
//! owned [`http::Response`] is made only by [`Answer::to_response`].

use std::fmt;
use std::ops::ControlFlow;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::transport::Exchange;
use crate::transport::http1;

/// One answer, borrowed from the connection it arrived on for as long as the decoder runs.
#[derive(Clone, Copy)]
pub struct Answer<'a> {
    status: StatusCode,
    head: &'a [u8],
    body: &'a [u8],
}

impl<'a> Answer<'a> {
    pub(crate) fn new(exchange: &'a Exchange) -> Self {
        Self {
            status: exchange.status(),
            head: exchange.head(),
            body: exchange.body(),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body, whole (chunks joined), at most the upstream's `max_answer_bytes`.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The first value of the header `name` (any case), as it arrived. Reads the head again
    /// on each call; [`Answer::headers`] reads it once for all.
    pub fn header(&self, name: impl AsRef<str>) -> Option<&'a [u8]> {
        let name = name.as_ref();
        let mut found = None;
        http1::visit_fields(self.head, |field, value| {
            if field.eq_ignore_ascii_case(name) {
                found = Some(value);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        found
    }

    /// Every header field, in a map; framing fields (`Transfer-Encoding`, `Content-Length`)
    /// as they arrived, though the body is already decoded.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        http1::visit_fields(self.head, |name, value| {
            // The head was parsed by the same rules: every field converts.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
            ControlFlow::Continue(())
        });
        headers
    }

    /// The answer copied out of the connection: status, headers and body.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::copy_from_slice(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers();
        response
    }
}

impl fmt::Debug for Answer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("head_bytes", &self.head.len())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}
