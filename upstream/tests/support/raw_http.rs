//! A small HTTP/1.1 server for the tests: each request read whole (head, then a body of its
//! `Content-Length`), answered by the test's handler, connections kept alive. It plays the
//! service's instances and a Cloud Map API whose answers the test writes byte for byte.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes of a request head.
const MAX_HEAD: usize = 16 * 1024;

/// One request, as read.
pub struct Request {
    /// The request line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Decides each answer.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `handler` on `listener` until the test's runtime stops.
pub fn serve(listener: TcpListener, handler: Handler) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_connection(stream, Arc::clone(&handler)));
        }
    });
}

/// `count` instances of a service on 127.0.0.11, .12, ..., all on one port (A records carry
/// no port); each answers every request with 200 and its address's last octet, `i11`.
/// Returns the addresses and the port.
pub async fn instances(count: u8) -> (Vec<Ipv4Addr>, u16) {
    'attempt: for _ in 0..20 {
        let ips: Vec<Ipv4Addr> = (0..count)
            .map(|n| Ipv4Addr::new(127, 0, 0, 11 + n))
            .collect();
        let first = TcpListener::bind(SocketAddr::from((ips[0], 0)))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(SocketAddr::from((*ip, port))).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'attempt,
            }
        }
        for (listener, ip) in listeners.into_iter().zip(&ips) {
            let id = format!("i{}", ip.octets()[3]);
            serve(
                listener,
                Arc::new(move |_| Response {
                    status: 200,
                    content_type: "text/plain",
                    body: id.clone().into_bytes(),
                }),
            );
        }
        return (ips, port);
    }
    panic!("no port free on every instance address");
}

async fn serve_connection(mut stream: TcpStream, handler: Handler) {
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let response = handler(&request);
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            response.status,
            if response.status == 200 {
                "OK"
            } else {
                "Error"
            },
            response.content_type,
            response.body.len()
        );
        // One write: a head and a body written apart meet Nagle's algorithm and the
        // client's delayed ACK, and each answer would take 40 ms.
        let mut answer = head.into_bytes();
        answer.extend_from_slice(&response.body);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Reads one request from `stream`; `buffer` keeps what was read past it.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Request> {
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD || !read_more(stream, buffer).await {
            return None;
        }
    };
    let head = String::from_utf8(buffer[..end].to_vec()).ok()?;
    buffer.drain(..end + 4);
    let mut request = Request {
        head,
        body: Vec::new(),
    };
    let length: usize = request
        .header("content-length")
        .map_or(Some(0), |v| v.parse().ok())?;
    while buffer.len() < length {
        if !read_more(stream, buffer).await {
            return None;
        }
    }
    request.body = buffer.drain(..length).collect();
    Some(request)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}
