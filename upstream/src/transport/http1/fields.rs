//! An answer's header fields, read when asked. The head was checked whole when it arrived
//! ([`super::parse_head`] reads only what framing and reuse need); a caller that wants a
//! header has it read again here, by the same parser, from where the head still lies in the
//! connection's buffer. An answer nobody asks about costs no second parse.

use std::mem::MaybeUninit;
use std::ops::ControlFlow;

/// Most header lines read back (as many as [`super::parse_head`] accepts).
const MAX_FIELDS: usize = 100;

/// Calls `visit` with each header field of the final answer head `head` (name, raw value), in
/// order, until it breaks. A head that no longer parses (it always does: it was parsed when
/// it arrived) visits nothing.
pub fn visit_fields<'a>(
    head: &'a [u8],
    mut visit: impl FnMut(&'a str, &'a [u8]) -> ControlFlow<()>,
) {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        head,
        &mut headers,
    );
    if parsed.is_err() {
        return;
    }
    for header in response.headers.iter() {
        if visit(header.name, header.value).is_break() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_back_in_order() {
        let head = b"HTTP/1.1 201 Created\r\nLocation: /orders/7\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let mut seen = Vec::new();
        visit_fields(head, |name, value| {
            seen.push((name, value));
            ControlFlow::Continue(())
        });
        assert_eq!(
            seen,
            [
                ("Location", &b"/orders/7"[..]),
                ("X-A", b"1"),
                ("x-a", b"2")
            ]
        );
        let mut first = None;
        visit_fields(head, |name, value| {
            if name.eq_ignore_ascii_case("x-a") {
                first = Some(value);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        assert_eq!(first, Some(&b"1"[..]));
    }
}
