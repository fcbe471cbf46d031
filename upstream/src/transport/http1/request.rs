//! Request heads: what may be written (the byte rules a maker checks its parts against), the
//! lines made from checked parts, and the head of one attempt written from them into a reused
//! buffer.
//!
//! The writer only copies: each part was checked once by its maker (the call's request when it
//! was built, the endpoint's address, the trace context) against the rules here, so that no
//! caller input can end a line or the head early (RFC 9112 section 2.2: a bare CR or LF in a
//! field is how a request is split; RFC 9110 section 5.5: field values are visible characters,
//! spaces and tabs).

/// Header lines made for one attempt (a trace's), written straight into the head after the
/// others. The writer checks what it writes, as [`field_line`] would have it.
pub trait AttemptFields: Sync {
    /// Appends the lines, each `name: value\r\n`.
    fn write(&self, out: &mut Vec<u8>);
}

/// A request as the wire takes it, from checked parts.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    /// Names the head's bytes: the same id, other than 0, always stands for the same line,
    /// fields, body length and flags, so that a connection that has just sent this head can
    /// send it again without writing it anew. 0: never reused. Ignored when there are lines
    /// of the attempt's own.
    pub id: u64,
    /// The request line, `<method> <target> HTTP/1.1\r\n` (see [`request_line`]).
    pub line: &'a [u8],
    /// Header lines in order, each one or more `name: value\r\n` (see [`field_line`]); `Host`
    /// comes first.
    pub fields: [&'a [u8]; 3],
    /// The body, sent after the head with its `Content-Length`.
    pub body: &'a [u8],
    /// Send `Content-Length: 0` when the body is empty too: the method defines a body (POST,
    /// PUT, PATCH), and a server may wait for one without it (RFC 9110 section 8.6).
    pub always_length: bool,
    /// The answer has no body, whatever its head says: the request is a `HEAD`.
    pub head_only: bool,
    /// The request may be written again on another connection when a reused one turns out to
    /// be closed after it was written (its method is idempotent, or the caller said so). A
    /// request of which nothing was written is always sent again.
    pub replayable: bool,
}

/// True for a token (RFC 9110 section 5.6.2): a method or a field name.
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// True for a field value that may be written as it is: visible ASCII, spaces, tabs and
/// obs-text (RFC 9110 section 5.5), with no CR, LF, NUL or other control.
pub fn is_field_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&byte| byte == b'\t' || (byte >= 0x20 && byte != 0x7f))
}

/// True for an origin-form request target (RFC 9112 section 3.2.1): a path starting with `/`
/// and an optional query, in visible ASCII (anything else percent-encoded), with no space, no
/// control and no fragment (`#` is never sent).
pub fn is_origin_form(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'/')
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && byte != b'#')
}

/// `<method> <target> HTTP/1.1\r\n`, from a token and an origin-form target.
pub fn request_line(method: &[u8], target: &[u8]) -> Vec<u8> {
    debug_assert!(is_token(method) && is_origin_form(target));
    let mut line = Vec::with_capacity(method.len() + target.len() + 12);
    line.extend_from_slice(method);
    line.push(b' ');
    line.extend_from_slice(target);
    line.extend_from_slice(b" HTTP/1.1\r\n");
    line
}

/// Appends `name: value\r\n`, from a token and a checked value.
pub fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    debug_assert!(is_token(name) && is_field_value(value));
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `request`'s head into `out` (emptied first): the request line, the header lines,
/// the `attempt`'s own lines, `Content-Length` when there is a body or the method defines
/// one, and the empty line.
pub fn write_head(out: &mut Vec<u8>, request: &Outgoing<'_>, attempt: Option<&dyn AttemptFields>) {
    out.clear();
    out.extend_from_slice(request.line);
    for fields in request.fields {
        out.extend_from_slice(fields);
    }
    if let Some(attempt) = attempt {
        attempt.write(out);
    }
    if !request.body.is_empty() || request.always_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, request.body.len());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal digits, without the formatting machinery.
fn push_decimal(out: &mut Vec<u8>, mut value: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_head_plain(out: &mut Vec<u8>, request: &Outgoing<'_>) {
        write_head(out, request, None);
    }

    fn outgoing<'a>(line: &'a [u8], fields: [&'a [u8]; 3], body: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            id: 0,
            line,
            fields,
            body,
            always_length: false,
            head_only: false,
            replayable: true,
        }
    }

    #[test]
    fn the_request_head_is_what_a_server_expects() {
        let line = request_line(b"GET", b"/healthz?full=1");
        let mut fields = Vec::new();
        field_line(&mut fields, b"host", b"10.0.1.7:3000");
        field_line(&mut fields, b"accept", b"application/json");
        let mut head = Vec::new();
        write_head_plain(&mut head, &outgoing(&line, [&fields, b"", b""], b""));
        assert_eq!(
            head,
            b"GET /healthz?full=1 HTTP/1.1\r\nhost: 10.0.1.7:3000\r\naccept: application/json\r\n\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut headers);
        assert_eq!(
            request.parse(&head),
            Ok(httparse::Status::Complete(head.len()))
        );
    }

    #[test]
    fn a_body_gets_its_length_and_a_post_always_has_one() {
        let line = request_line(b"POST", b"/orders");
        let mut head = Vec::new();
        write_head_plain(
            &mut head,
            &outgoing(&line, [b"host: h\r\n", b"", b""], b"{}"),
        );
        assert_eq!(
            head,
            b"POST /orders HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n"
        );
        let empty = Outgoing {
            always_length: true,
            ..outgoing(&line, [b"", b"", b""], b"")
        };
        write_head_plain(&mut head, &empty);
        assert_eq!(head, b"POST /orders HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn the_byte_rules_refuse_what_would_split_a_request() {
        assert!(is_field_value(b"text/html; q=0.9\t\xe9"));
        for bad in [
            &b"a\r\nx: y"[..],
            b"a\nb",
            b"a\rb",
            b"a\0b",
            b"\x1b[2J",
            b"\x7f",
        ] {
            assert!(!is_field_value(bad), "{bad:?}");
        }
        assert!(is_token(b"X-Request-Id") && is_token(b"PATCH"));
        assert!(!is_token(b"") && !is_token(b"a b") && !is_token(b"a:b"));
        assert!(is_origin_form(b"/a/b?c=d&e=%20"));
        for bad in [
            &b""[..],
            b"a/b",
            b"*",
            b"/a b",
            b"/a#b",
            b"/a\r\n",
            b"/\0",
            b"/\xc3\xa9",
        ] {
            assert!(!is_origin_form(bad), "{bad:?}");
        }
    }
}
