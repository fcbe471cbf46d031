//! An answer's head: status, framing, reuse and `Retry-After`, parsed where it lies.

use std::mem::MaybeUninit;
use std::time::Duration;

use super::WireError;

/// Most bytes of answer head, interim (1xx) heads included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in one head (hyper's default too).
const MAX_HEADERS: usize = 100;

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// When the server closes the connection.
    UntilClose,
}

/// What an answer's head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code (never 1xx).
    pub status: u16,
    /// How the body ends.
    pub framing: Framing,
    /// The server keeps the connection open after this answer.
    pub keep_alive: bool,
    /// `Retry-After` in seconds (an HTTP date counts as one second).
    pub retry_after: Option<Duration>,
}

/// What the bytes at the start of a buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) answer of this many bytes, to skip.
    Interim(usize),
    /// A final answer's head of this many bytes.
    Complete(Head, usize),
}

/// Parses the answer head at the start of `buf`; `head_only` when the request was a `HEAD`,
/// whose answer has no body whatever its head says.
pub fn parse_head(buf: &[u8], head_only: bool) -> Result<Parsed, WireError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, buf, &mut headers)
        .map_err(|err| {
            WireError::Head(match err {
                httparse::Error::TooManyHeaders => "too many headers",
                httparse::Error::Version => "not HTTP/1.x",
                httparse::Error::Status => "bad status line",
                _ => "bad header",
            })
        })?;
    let httparse::Status::Complete(len) = parsed else {
        return Ok(Parsed::Partial);
    };
    let status = response.code.unwrap_or_default();
    match status {
        // Three digits, but no class (RFC 9110 section 15).
        0..=99 => return Err(WireError::Head("bad status line")),
        101 => return Err(WireError::Head("unexpected protocol switch")),
        100..=199 => return Ok(Parsed::Interim(len)),
        _ => {}
    }
    let http11 = response.version == Some(1);
    let facts = Facts::read(response.headers, http11)?;
    Ok(Parsed::Complete(facts.into_head(status, head_only), len))
}

/// What the header lines of a final answer say about its framing and reuse.
struct Facts {
    /// HTTP/1.1, or HTTP/1.0 with `keep-alive`.
    keep_alive: bool,
    /// A `close` option, on any `Connection` line: it ends reuse whatever else they say.
    close: bool,
    length: Option<u64>,
    /// Whether the final transfer coding is chunked, when there is one.
    chunked: Option<bool>,
    retry_after: Option<Duration>,
}

impl Facts {
    fn read(headers: &[httparse::Header<'_>], http11: bool) -> Result<Self, WireError> {
        let mut facts = Self {
            keep_alive: http11,
            close: false,
            length: None,
            chunked: None,
            retry_after: None,
        };
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                facts.content_length(header.value)?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // HTTP/1.0 has no transfer codings: the framing is faulty (RFC 9112
                // section 6.1), and a client discards such an answer (section 6.3, item 5).
                if !http11 {
                    return Err(WireError::Head("Transfer-Encoding in HTTP/1.0"));
                }
                // The final coding decides; several headers make one list.
                if let Some(last) = tokens(header.value).last() {
                    facts.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if name.eq_ignore_ascii_case("connection") {
                facts.connection(header.value, http11);
            } else if name.eq_ignore_ascii_case("retry-after") {
                let seconds = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|value| value.trim().parse().ok());
                facts.retry_after = Some(Duration::from_secs(seconds.unwrap_or(1)));
            }
        }
        Ok(facts)
    }

    /// One `Content-Length` line, perhaps a list: every value must be the same number.
    fn content_length(&mut self, value: &[u8]) -> Result<(), WireError> {
        for value in value.split(|&byte| byte == b',') {
            let value =
                parse_decimal(value.trim_ascii()).ok_or(WireError::Head("bad Content-Length"))?;
            if self.length.is_some_and(|seen| seen != value) {
                return Err(WireError::Head("Content-Length values disagree"));
            }
            self.length = Some(value);
        }
        Ok(())
    }

    /// One `Connection` line: `close` ends reuse (RFC 9112 section 9.6), even beside a
    /// `keep-alive`; `keep-alive` asks for it in HTTP/1.0.
    fn connection(&mut self, value: &[u8], http11: bool) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                self.keep_alive = true;
            }
        }
    }

    /// The head of a final answer with `status` (to a `HEAD` when `head_only`), its framing
    /// by RFC 9112 section 6.3.
    fn into_head(mut self, status: u16, head_only: bool) -> Head {
        // A length beside a transfer coding may have been meant for another hop: the
        // connection is not reused after such an answer (section 6.3, item 3), whatever its
        // status.
        if self.chunked.is_some() && self.length.is_some() {
            self.keep_alive = false;
        }
        let framing = if head_only || status == 204 || status == 304 {
            // No body (item 1): the answer ends with its head.
            Framing::Length(0)
        } else if let Some(chunked) = self.chunked {
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if let Some(length) = self.length {
            Framing::Length(length)
        } else {
            Framing::UntilClose
        };
        Head {
            status,
            framing,
            keep_alive: self.keep_alive && !self.close && framing != Framing::UntilClose,
            retry_after: self.retry_after,
        }
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// A non-empty run of decimal digits that fits in a `u64`.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        if digit.is_ascii_digit() {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes, false) {
            Ok(Parsed::Complete(head, len)) => (head, len),
            other => panic!("not a complete head: {other:?}"),
        }
    }

    #[test]
    fn a_length_framed_answer_is_kept_alive() {
        let bytes = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 12\r\n\r\n{\"name\":\"a\"}";
        let (head, len) = complete(bytes);
        assert_eq!(len, bytes.len() - 12);
        assert_eq!(
            head,
            Head {
                status: 200,
                framing: Framing::Length(12),
                keep_alive: true,
                retry_after: None
            }
        );
        assert_eq!(parse_head(&bytes[..20], false), Ok(Parsed::Partial));
    }

    #[test]
    fn connection_headers_and_versions_decide_reuse() {
        let close = complete(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        )
        .0;
        assert!(!close.keep_alive);
        let old = complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").0;
        assert!(!old.keep_alive);
        let old_kept =
            complete(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").0;
        assert!(old_kept.keep_alive);
        // `close` on any line wins, whatever line comes after it.
        let old_closed = complete(
            b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .0;
        assert!(!old_closed.keep_alive);
        let until_close = complete(b"HTTP/1.1 200 OK\r\n\r\n").0;
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
    }

    #[test]
    fn an_answer_to_head_ends_with_its_head() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let Ok(Parsed::Complete(head, len)) = parse_head(bytes, true) else {
                panic!("not a complete head: {bytes:?}");
            };
            assert_eq!(len, bytes.len());
            assert_eq!(head.framing, Framing::Length(0));
            assert!(head.keep_alive, "{bytes:?}");
        }
    }

    #[test]
    fn transfer_encoding_wins_over_length_and_ends_reuse() {
        let both =
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .0;
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive);
        let chunked = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").0;
        assert_eq!(chunked.framing, Framing::Chunked);
        assert!(chunked.keep_alive);
        let gzip = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").0;
        assert_eq!(gzip.framing, Framing::UntilClose);
        // Both on an answer without a body still end reuse.
        let no_content =
            complete(b"HTTP/1.1 204 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n")
                .0;
        assert!(!no_content.keep_alive);
    }

    #[test]
    fn a_transfer_coding_in_http_1_0_is_refused() {
        assert_eq!(
            parse_head(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(WireError::Head("Transfer-Encoding in HTTP/1.0"))
        );
    }

    #[test]
    fn lengths_must_be_digits_and_agree() {
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n")
                .0
                .framing,
            Framing::Length(3)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad, false), Err(WireError::Head(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_no_body_statuses_have_none() {
        let bytes =
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let Ok(Parsed::Interim(len)) = parse_head(bytes, false) else {
            panic!("not interim");
        };
        let (head, _) = complete(&bytes[len..]);
        assert_eq!(head.status, 204);
        assert_eq!(head.framing, Framing::Length(0));
        assert!(head.keep_alive);
        assert!(parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_one() {
        let head =
            complete(b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n").0;
        assert_eq!(head.retry_after, Some(Duration::from_secs(7)));
        let date =
            complete(b"HTTP/1.1 503 Busy\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n\r\n").0;
        assert_eq!(date.retry_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn garbage_is_an_error_not_a_wait() {
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 000 OK\r\n\r\n",
            b"HTTP/1.1 099 OK\r\n\r\n",
        ] {
            assert!(parse_head(bad, false).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        let bytes = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse_head(bytes.as_bytes(), false),
            Err(WireError::Head("too many headers"))
        );
    }
}
