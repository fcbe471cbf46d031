//! What the tests share: name's settings as its command line gives them, one HTTP/1.1 answer
//! read off a raw socket (its status, its headers, and its whole body, by `content-length`),
//! polling to a deadline, and the kernel's count of bytes a socket's owner has not read yet.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;

/// name's settings from these flags, on top of the binary's defaults.
pub fn config(flags: &[&str]) -> name::Config {
    let args = std::iter::once("name").chain(flags.iter().copied());
    common::Cli::<name::Config>::try_parse_from(args)
        .unwrap()
        .config
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name`, if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether the answer asks the caller to close the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }
}

/// Reads one answer from `stream`, waiting at most 5 s for each part: the head, then exactly
/// `content-length` bytes of body. An answer cut short is an error, not a shorter body.
pub fn read_answer(stream: &mut TcpStream) -> std::io::Result<Answer> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if received.len() > 64 * 1024 {
            return Err(invalid("an answer head longer than 64 KiB"));
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(received[..head_end].to_vec()).map_err(|_| invalid("head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| invalid("no content-length"))?;
    let mut body = received[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8(body).map_err(|_| invalid("body"))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends `GET path` on `stream` and reads its answer.
pub fn ask(stream: &mut TcpStream, path: &str) -> std::io::Result<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: name\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    read_answer(stream)
}

/// `GET path` on a new connection to `addr`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    ask(&mut stream, path)
}

/// Whether `stream`'s peer has closed it: a read finds the end of the stream (or a reset)
/// within 5 s, and no further bytes.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut rest = [0u8; 64];
    match stream.read(&mut rest) {
        Ok(read) => read == 0,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Polls `check` every 20 ms until it gives a value, for at most `limit`.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 20 ms until it holds, for at most `limit`; returns whether it did.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    poll(limit, || check().then_some(())).is_some()
}

/// Bytes that have reached the socket from `peer` to `local` and that its owner has not read,
/// from the kernel's table of IPv4 TCP sockets (`rx_queue` in `/proc/net/tcp`); `None` when
/// there is no such socket. A server has read what a client sent once this is 0 on its side.
pub fn unread_bytes(local: SocketAddr, peer: SocketAddr) -> Option<u64> {
    let (local, peer) = (proc_net_addr(local), proc_net_addr(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&peer.as_str()) {
            return None;
        }
        let (_, rx_queue) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx_queue, 16).ok()
    })
}

/// An address as `/proc/net/tcp` prints it: the address's four bytes as the kernel holds them
/// (network order), read as a native integer, and the port, both in hex.
fn proc_net_addr(addr: SocketAddr) -> String {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("/proc/net/tcp lists IPv4 sockets only: {addr}");
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    )
}
