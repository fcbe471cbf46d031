//! A DNS responder for the tests that answers whatever the test tells it to, well formed or
//! not: a message built by the test (records for other names, a CNAME loop, another question),
//! raw bytes, or silence. UDP and TCP on one loopback port; the test swaps the script while the
//! client runs, and counts the queries. hickory-proto encodes the messages, so what goes over
//! the wire is DNS as a faulty server would send it, not a mock of the client.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the responder sends back to one query.
pub enum Reply {
    /// This message, encoded.
    Message(Message),
    /// These bytes, as they are.
    Bytes(Vec<u8>),
    /// Nothing.
    Silence,
}

/// Decides the reply to each query.
pub type Script = Arc<dyn Fn(&Message, Transport) -> Reply + Send + Sync>;

/// A running responder; it stops when the test's runtime does. Clones share it.
#[derive(Clone)]
pub struct RawDns {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    queries: Arc<AtomicUsize>,
}

impl RawDns {
    /// Starts on 127.0.0.1, UDP and TCP on one port, answering with `script`.
    pub async fn start(
        script: impl Fn(&Message, Transport) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let (udp, tcp) = bind_pair().await;
        let dns = Self {
            addr: udp.local_addr().unwrap(),
            script: Arc::new(Mutex::new(Arc::new(script))),
            queries: Arc::new(AtomicUsize::new(0)),
        };
        tokio::spawn(serve_udp(udp, dns.clone()));
        tokio::spawn(serve_tcp(tcp, dns.clone()));
        dns
    }

    /// The address to ask.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers with `script` from now on.
    pub fn answer_with(
        &self,
        script: impl Fn(&Message, Transport) -> Reply + Send + Sync + 'static,
    ) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    /// Queries received so far, well formed or not.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    fn reply(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let request = Message::from_vec(request).ok()?;
        let script = Arc::clone(&self.script.lock().unwrap());
        match script(&request, transport) {
            Reply::Message(message) => Some(message.to_vec().unwrap()),
            Reply::Bytes(bytes) => Some(bytes),
            Reply::Silence => None,
        }
    }
}

// === Messages and records ===

/// A fully qualified name.
pub fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// The start of a well-formed reply to `request`: its id and question, NOERROR, no records.
pub fn reply_to(request: &Message) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.response_code = ResponseCode::NoError;
    response.add_queries(request.queries.iter().cloned());
    response
}

/// The question of `request`.
pub fn question(request: &Message) -> &Query {
    &request.queries[0]
}

pub fn a(owner: &str, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(ip)))
}

pub fn aaaa(owner: &str, ttl: u32) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
    )
}

pub fn txt(owner: &str, ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::TXT(TXT::new(vec!["v=1".into()])))
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

/// An SRV record as Cloud Map writes them: priority and weight 1.
pub fn srv(owner: &str, ttl: u32, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::SRV(SRV::new(1, 1, port, name(target))),
    )
}

/// The SOA of `zone`, whose TTL and minimum give the negative-caching TTL (RFC 2308).
pub fn soa(zone: &str, ttl: u32) -> Record {
    let data = SOA::new(
        name("ns.internal."),
        name("admin.internal."),
        1,
        60,
        60,
        600,
        ttl,
    );
    Record::from_rdata(name(zone), ttl, RData::SOA(data))
}

/// The record type asked by `request`.
pub fn asked_type(request: &Message) -> RecordType {
    question(request).query_type()
}

// === Serving ===

/// Binds UDP and TCP on one free loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, dns: RawDns) {
    let mut buffer = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        if let Some(response) = dns.reply(&buffer[..len], Transport::Udp) {
            let _ = socket.send_to(&response, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, dns: RawDns) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve_tcp_connection(stream, dns.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, dns: RawDns) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0; usize::from(len)];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some(response) = dns.reply(&request, Transport::Tcp) else {
            continue;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&response).await.is_err() {
            return;
        }
    }
}
