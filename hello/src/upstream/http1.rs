//! HTTP/1.1 on the wire for the upstream's calls, without I/O (after h11 and Pingora's
//! HTTP/1 codec): the request heads, made once per endpoint, and the reading of an answer:
//! its head (status, framing, whether the connection may be reused, `Retry-After`) and its
//! body up to a bound, chunks joined in place. [`super::pool`] feeds it the bytes.
//!
//! Only what a `GET` needs: the request has no body, and the answer's framing follows
//! RFC 9112 section 6.3 (<https://www.rfc-editor.org/rfc/rfc9112#section-6.3>): no body for
//! 1xx, 204 and 304; `Transfer-Encoding` over `Content-Length`; chunked when it is the final
//! coding, else until the connection closes; `Content-Length` values that disagree are an
//! error; neither, and the body runs to the close. A connection is reused only when the
//! answer was HTTP/1.1 without `Connection: close` (or HTTP/1.0 with `keep-alive`), its
//! length was known, and nothing followed it.

use std::mem::MaybeUninit;
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;

/// Most bytes of answer head, interim (1xx) heads included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in one head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// Most bytes of chunk framing (sizes, extensions, trailers) around a body, beyond the data.
const MAX_CHUNK_OVERHEAD: usize = 16 * 1024;

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

/// Builds `GET <path> HTTP/1.1` with `Host`, and `Accept` and `Via` when given. Every part is
/// an already validated `Uri` or `HeaderValue`, so the head is well formed.
pub fn request_head(
    path: &Uri,
    host: &HeaderValue,
    accept: Option<&HeaderValue>,
    via: Option<&HeaderValue>,
) -> Box<[u8]> {
    let target = path.path_and_query().map_or("/", |target| target.as_str());
    let mut head = Vec::with_capacity(64 + target.len());
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    for (name, value) in [("accept", accept), ("via", via)] {
        if let Some(value) = value {
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n\r\n");
    head.into_boxed_slice()
}

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

/// Parses the answer head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, WireError> {
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
        101 => return Err(WireError::Head("unexpected protocol switch")),
        100..=199 => return Ok(Parsed::Interim(len)),
        _ => {}
    }
    let http11 = response.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut retry_after = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|&byte| byte == b',') {
                let value = parse_decimal(value.trim_ascii())
                    .ok_or(WireError::Head("bad Content-Length"))?;
                if length.is_some_and(|seen| seen != value) {
                    return Err(WireError::Head("Content-Length values disagree"));
                }
                length = Some(value);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The final coding decides; several headers make one list.
            if let Some(last) = tokens(header.value).last() {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(header.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            let seconds = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok());
            retry_after = Some(Duration::from_secs(seconds.unwrap_or(1)));
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if let Some(chunked) = chunked {
        // A length beside a transfer coding may have been meant for another hop: the
        // connection is not reused after such an answer (RFC 9112 section 6.3, item 3).
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    Ok(Parsed::Complete(
        Head {
            status,
            framing,
            keep_alive,
            retry_after,
        },
        len,
    ))
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

/// Joins a chunked body's data in place: the data moves down over the framing as it is
/// decoded, so the body ends up contiguous where it began.
#[derive(Debug)]
pub struct Dechunker {
    state: Chunk,
    /// Body bytes decoded so far.
    data: usize,
    /// Framing bytes consumed so far.
    overhead: usize,
    limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines, up to the empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// How far [`Dechunker::decode`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of `buf[start..]` consumed.
    pub consumed: usize,
    /// The body's end in `buf`: decoded data lies in `start_of_body..body_end`.
    pub body_end: usize,
    /// The last chunk and the trailers have been read.
    pub done: bool,
}

impl Dechunker {
    /// A decoder for a body of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Chunk::Size,
            data: 0,
            overhead: 0,
            limit,
        }
    }

    /// Decodes what it can of `buf[raw..]`, writing data from `out` on (`out <= raw`).
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        mut raw: usize,
        mut out: usize,
    ) -> Result<Progress, WireError> {
        let start = raw;
        loop {
            match self.state {
                Chunk::Done => break,
                Chunk::Size => {
                    let Some(line) = line(&buf[raw..], MAX_CHUNK_LINE)? else {
                        break;
                    };
                    let size = chunk_size(&buf[raw..raw + line.content])?;
                    raw += line.total;
                    self.overhead += line.total;
                    if size > (self.limit - self.data) as u64 {
                        return Err(WireError::TooLarge(self.limit));
                    }
                    self.state = match size {
                        0 => Chunk::Trailers,
                        size => Chunk::Data(size as usize),
                    };
                }
                Chunk::Data(left) => {
                    let take = left.min(buf.len() - raw);
                    if take == 0 {
                        break;
                    }
                    buf.copy_within(raw..raw + take, out);
                    raw += take;
                    out += take;
                    self.data += take;
                    self.state = match left - take {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    };
                }
                Chunk::DataEnd => {
                    let Some(line) = line(&buf[raw..], 2)? else {
                        break;
                    };
                    if line.content != 0 {
                        return Err(WireError::Chunked("no line end after chunk data"));
                    }
                    raw += line.total;
                    self.overhead += line.total;
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line) = line(&buf[raw..], MAX_CHUNK_LINE)? else {
                        break;
                    };
                    raw += line.total;
                    self.overhead += line.total;
                    if line.content == 0 {
                        self.state = Chunk::Done;
                    }
                }
            }
            if self.overhead > MAX_CHUNK_OVERHEAD {
                return Err(WireError::Chunked("too much framing"));
            }
        }
        Ok(Progress {
            consumed: raw - start,
            body_end: out,
            done: self.state == Chunk::Done,
        })
    }
}

/// A line's length without and with its end (CRLF, or a bare LF).
struct Line {
    content: usize,
    total: usize,
}

/// The line at the start of `bytes`, if complete; longer than `max` is an error.
fn line(bytes: &[u8], max: usize) -> Result<Option<Line>, WireError> {
    let window = &bytes[..bytes.len().min(max + 2)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(lf) => {
            let content = if lf > 0 && window[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Ok(Some(Line {
                content,
                total: lf + 1,
            }))
        }
        None if window.len() > max + 1 => Err(WireError::Chunked("line too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then optional whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    if digits == 0 || digits > 16 {
        return Err(WireError::Chunked("bad chunk size"));
    }
    if !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t')) {
        return Err(WireError::Chunked("bad chunk size"));
    }
    line[..digits]
        .iter()
        .try_fold(0u64, |size, &digit| {
            let value = (digit as char).to_digit(16)?;
            size.checked_mul(16)?.checked_add(value.into())
        })
        .ok_or(WireError::Chunked("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes) {
            Ok(Parsed::Complete(head, len)) => (head, len),
            other => panic!("not a complete head: {other:?}"),
        }
    }

    #[test]
    fn the_request_head_is_what_a_server_expects() {
        let head = request_head(
            &Uri::from_static("/healthz?full=1"),
            &HeaderValue::from_static("10.0.1.7:3000"),
            Some(&HeaderValue::from_static("application/json")),
            Some(&HeaderValue::from_static("1.1 hello")),
        );
        assert_eq!(
            &*head,
            b"GET /healthz?full=1 HTTP/1.1\r\nhost: 10.0.1.7:3000\r\naccept: application/json\r\nvia: 1.1 hello\r\n\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut headers);
        assert_eq!(
            request.parse(&head),
            Ok(httparse::Status::Complete(head.len()))
        );
        let bare = request_head(
            &Uri::from_static("/"),
            &HeaderValue::from_static("h:1"),
            None,
            None,
        );
        assert_eq!(&*bare, b"GET / HTTP/1.1\r\nhost: h:1\r\n\r\n");
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
        assert_eq!(parse_head(&bytes[..20]), Ok(Parsed::Partial));
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
        let until_close = complete(b"HTTP/1.1 200 OK\r\n\r\n").0;
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
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
                matches!(parse_head(bad), Err(WireError::Head(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_no_body_statuses_have_none() {
        let bytes =
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let Ok(Parsed::Interim(len)) = parse_head(bytes) else {
            panic!("not interim");
        };
        let (head, _) = complete(&bytes[len..]);
        assert_eq!(head.status, 204);
        assert_eq!(head.framing, Framing::Length(0));
        assert!(head.keep_alive);
        assert!(parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
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
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        let bytes = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse_head(bytes.as_bytes()),
            Err(WireError::Head("too many headers"))
        );
    }

    /// Feeds `raw` to a dechunker in pieces of `step` bytes, as reads would.
    fn dechunk(raw: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut buf = Vec::new();
        let mut decoder = Dechunker::new(limit);
        let (mut raw_at, mut out) = (0, 0);
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            let progress = decoder.decode(&mut buf, raw_at, out)?;
            raw_at += progress.consumed;
            out = progress.body_end;
            if progress.done {
                return Ok((buf[..out].to_vec(), buf[raw_at..].to_vec()));
            }
        }
        Err(WireError::Chunked("ended early"))
    }

    #[test]
    fn chunks_are_joined_in_place_whatever_the_reads() {
        let raw =
            b"5\r\nhello\r\n1;ext=\"a b\"\r\n,\r\n6 \r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in 1..raw.len() {
            let (body, left) = dechunk(raw, step, 64).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            // What follows the body is left where it lies.
            assert!(b"NEXT".starts_with(&left), "step {step}: {left:?}");
        }
        let (body, _) = dechunk(b"A\nabcdefghij\n0\n\n", 3, 64).unwrap();
        assert_eq!(body, b"abcdefghij");
    }

    #[test]
    fn chunked_bodies_are_bounded() {
        assert_eq!(dechunk(b"41\r\n", 64, 64), Err(WireError::TooLarge(64)));
        assert_eq!(
            dechunk(b"20\r\n0123456789abcdef0123456789abcdef\r\n21\r\n", 64, 64),
            Err(WireError::TooLarge(64))
        );
        assert_eq!(
            dechunk(b"ffffffffffffffffff\r\n", 64, 64),
            Err(WireError::Chunked("bad chunk size"))
        );
        assert_eq!(
            dechunk(b"zz\r\n", 64, 64),
            Err(WireError::Chunked("bad chunk size"))
        );
        assert_eq!(
            dechunk(b"1\r\nab\r\n", 64, 64),
            Err(WireError::Chunked("no line end after chunk data"))
        );
        let long_extension = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE + 10));
        assert_eq!(
            dechunk(long_extension.as_bytes(), 7, 64),
            Err(WireError::Chunked("line too long"))
        );
        let endless_trailers = format!("0\r\n{}", "x-t: y\r\n".repeat(4096));
        assert_eq!(
            dechunk(endless_trailers.as_bytes(), 512, 64),
            Err(WireError::Chunked("too much framing"))
        );
        let one_byte_chunks = "1\r\na\r\n".repeat(65);
        assert_eq!(
            dechunk(one_byte_chunks.as_bytes(), 100, 64),
            Err(WireError::TooLarge(64))
        );
    }
}
