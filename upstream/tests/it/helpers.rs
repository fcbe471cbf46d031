//! The instances the tests call, each a small HTTP server of the test's own on a loopback
//! address: an echo server on axum (a real HTTP/1.1 server, so that what the upstream writes
//! is checked by a parser that is not its own), and a raw one that records every request and
//! misbehaves as told. Plus the upstream started against them, and its metrics read back.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use upstream::{Options, Target, Upstream};

use crate::dns_server::DnsServer;

/// The service name the tests discover.
pub const SERVICE: &str = "svc.internal.";

pub use crate::loopback::same_port;

/// A tokio listener on a free port of 127.0.0.1.
pub fn local() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// The IPv4 address of a listener.
pub fn ip(listener: &std::net::TcpListener) -> Ipv4Addr {
    match listener.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => unreachable!("listeners are on IPv4 loopback"),
    }
}

/// An upstream for `target` with the default options changed by `change`.
pub fn start(target: Target, change: impl FnOnce(&mut Options)) -> (Upstream, Registry) {
    let mut options = Options::default();
    change(&mut options);
    let mut registry = Registry::default();
    let upstream = Upstream::start(target, options, &mut registry).unwrap();
    (upstream, registry)
}

/// An upstream for the one endpoint `addr` (a fixed address: no DNS).
pub fn fixed(addr: SocketAddr, change: impl FnOnce(&mut Options)) -> (Upstream, Registry) {
    start(format!("http://{addr}").parse().unwrap(), change)
}

/// A DNS server answering `SERVICE` with the addresses of `listeners`, and the target that
/// names them, on their port.
pub async fn dns_for(listeners: &[std::net::TcpListener]) -> (DnsServer, Target) {
    let dns = DnsServer::start(60).await;
    let ips: Vec<Ipv4Addr> = listeners.iter().map(ip).collect();
    dns.set_a(SERVICE, &ips);
    let port = listeners[0].local_addr().unwrap().port();
    let target = format!("http://{}:{port}", SERVICE.trim_end_matches('.'))
        .parse()
        .unwrap();
    (dns, target)
}

/// [`dns_for`], and an upstream discovering the listeners through it.
pub async fn discovered(
    listeners: &[std::net::TcpListener],
    change: impl FnOnce(&mut Options),
) -> (Upstream, Registry, DnsServer) {
    let (dns, target) = dns_for(listeners).await;
    let (upstream, registry) = start(target, |options| {
        options.dns_server = Some(dns.addr());
        change(options);
    });
    (upstream, registry, dns)
}

/// The value of the metric sample `name` (with its labels, as in the text format), or 0.
pub fn metric(registry: &Registry, sample: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

// === The echo server ===

/// Serves the echo routes on `listener`:
/// - `GET /healthz`: 200;
/// - `/status/{code}`: that status, with `location: /elsewhere`, two `x-multi` headers and the
///   body `status <code>`;
/// - `/bytes/{n}`: `n` bytes of `x`;
/// - `/slow/{ms}`: the echo, after that many milliseconds;
/// - anything else: 200 and the request as JSON (`method`, `target`, `headers` as
///   `[name, value]` pairs in order, `body` as a string), with `x-echo: 1`.
pub fn echo(listener: std::net::TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status/{code}", axum::routing::any(status))
        .route(
            "/bytes/{n}",
            get(|Path(n): Path<usize>| async move { "x".repeat(n) }),
        )
        .route("/slow/{ms}", axum::routing::any(slow))
        .fallback(echo_request);
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn status(Path(code): Path<u16>) -> Response {
    let status = StatusCode::from_u16(code).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("location", "/elsewhere".parse().unwrap());
    headers.append("x-multi", "one".parse().unwrap());
    headers.append("x-multi", "two".parse().unwrap());
    (status, headers, format!("status {code}")).into_response()
}

async fn slow(Path(ms): Path<u64>, request: Request) -> Response {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    echo_request(request).await
}

async fn echo_request(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            [
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let echoed = json!({
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    ([("x-echo", "1")], axum::Json(echoed)).into_response()
}

// === The raw server ===

/// What a raw instance does with a request.
#[derive(Debug, Clone)]
pub enum Act {
    /// Writes these bytes, and keeps the connection for the next request.
    Answer(Vec<u8>),
    /// Waits, then writes these bytes.
    AnswerAfter(Duration, Vec<u8>),
    /// Writes these bytes in pieces of this size, a millisecond apart.
    Pieces(Vec<u8>, usize),
    /// Writes these bytes, then closes the connection.
    Last(Vec<u8>),
    /// Closes the connection without answering.
    Close,
}

/// A request a raw instance read.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The head as it arrived.
    pub raw: Vec<u8>,
    /// Which request on its connection this is, from 0.
    pub nth: usize,
}

impl Seen {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A raw instance: reads requests (head and `Content-Length` body) and does what `act` says
/// with each; answers health probes (`GET /healthz`) 200 without recording them.
#[derive(Clone)]
pub struct Raw {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A 200 answer with `body`, length-framed.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Raw {
    /// Serves on `listener`, acting on each request with `act`.
    pub fn start(
        listener: std::net::TcpListener,
        act: impl Fn(&Seen) -> Act + Send + Sync + 'static,
    ) -> Self {
        let raw = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
        };
        let listener = TcpListener::from_std(listener).unwrap();
        let seen = Arc::clone(&raw.seen);
        let act: Arc<dyn Fn(&Seen) -> Act + Send + Sync> = Arc::new(act);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&seen), Arc::clone(&act)));
            }
        });
        raw
    }

    /// The requests seen so far, probes left out.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    act: Arc<dyn Fn(&Seen) -> Act + Send + Sync>,
) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let Some(request) = read_request(&mut stream, &mut buf, nth).await else {
            return;
        };
        let action = if request.target == "/healthz" {
            Act::Answer(ok("ok"))
        } else {
            seen.lock().unwrap().push(request.clone());
            act(&request)
        };
        let (bytes, piece) = match action {
            Act::Answer(bytes) => (bytes, usize::MAX),
            Act::Last(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Act::AnswerAfter(wait, bytes) => {
                tokio::time::sleep(wait).await;
                (bytes, usize::MAX)
            }
            Act::Pieces(bytes, piece) => (bytes, piece),
            Act::Close => return,
        };
        for part in bytes.chunks(piece.max(1)) {
            if stream.write_all(part).await.is_err() {
                return;
            }
            if piece != usize::MAX {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Reads one request from `stream` (`buf` keeps what was read beyond it).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, nth: usize) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = request.parse(buf).ok()? {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.parse().unwrap());
            let mut seen = Seen {
                method: request.method?.to_owned(),
                target: request.path?.to_owned(),
                headers,
                body: Vec::new(),
                raw: buf[..len].to_vec(),
                nth,
            };
            while buf.len() < len + length {
                read_more(stream, buf).await?;
            }
            seen.body = buf[len..len + length].to_vec();
            buf.drain(..len + length);
            return Some(seen);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(read) => {
            buf.extend_from_slice(&chunk[..read]);
            Some(())
        }
    }
}
