//! Request heads, written only from validated parts.

use http::Uri;
use http::header::HeaderValue;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
