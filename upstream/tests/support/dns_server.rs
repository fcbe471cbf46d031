//! A DNS server for the tests: authoritative for a zone the test changes at run time, on a
//! UDP and a TCP socket of one loopback port, counting the queries it answers. Built on
//! hickory-proto's message codec, so what goes over the wire is real DNS. Shared by the
//! upstream crate's tests and hello's (`#[path]`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone.
    Answer,
    /// SERVFAIL to everything, as a failing authority would.
    ServFail,
    /// Queries wait, unanswered, until the mode changes; then they are answered in the new
    /// mode (as a slow authority would).
    Hold,
}

#[derive(Debug)]
struct Zone {
    records: HashMap<(Name, RecordType), Vec<RData>>,
    ttl: u32,
    queries: HashMap<(Name, RecordType), usize>,
}

/// A running test DNS server; it stops when the test's runtime does.
#[derive(Clone)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    mode: watch::Sender<Mode>,
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

impl DnsServer {
    /// Starts a server on 127.0.0.1, UDP and TCP on the same port, with an empty zone whose
    /// records have `ttl` seconds.
    pub async fn start(ttl: u32) -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            records: HashMap::new(),
            ttl,
            queries: HashMap::new(),
        }));
        let mode = watch::Sender::new(Mode::Answer);
        tokio::spawn(serve_udp(udp, Arc::clone(&zone), mode.subscribe()));
        tokio::spawn(serve_tcp(tcp, Arc::clone(&zone), mode.subscribe()));
        Self { addr, zone, mode }
    }

    /// The address to give hello as `DNS_SERVER`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the A records of `owner` (replacing any); an empty list removes the name.
    pub fn set_a(&self, owner: &str, ips: &[Ipv4Addr]) {
        let data = ips.iter().map(|ip| RData::A(A(*ip))).collect();
        self.set(owner, RecordType::A, data);
    }

    /// Sets the SRV records of `owner`: one per (port, target), priority and weight 1 as Cloud
    /// Map writes them.
    pub fn set_srv(&self, owner: &str, targets: &[(u16, &str)]) {
        let data = targets
            .iter()
            .map(|(port, target)| RData::SRV(SRV::new(1, 1, *port, name(target))))
            .collect();
        self.set(owner, RecordType::SRV, data);
    }

    /// Switches between answering, SERVFAIL and holding queries.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Queries answered so far for `owner` and `record_type`.
    pub fn queries(&self, owner: &str, record_type: RecordType) -> usize {
        let zone = self.zone.lock().unwrap();
        zone.queries
            .get(&(name(owner), record_type))
            .copied()
            .unwrap_or(0)
    }

    fn set(&self, owner: &str, record_type: RecordType, data: Vec<RData>) {
        let mut zone = self.zone.lock().unwrap();
        if data.is_empty() {
            zone.records.remove(&(name(owner), record_type));
        } else {
            zone.records.insert((name(owner), record_type), data);
        }
    }
}

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

/// The mode to answer in, once it is not [`Mode::Hold`].
async fn released(mode: &mut watch::Receiver<Mode>) -> Mode {
    let released = mode
        .wait_for(|mode| *mode != Mode::Hold)
        .await
        .map(|mode| *mode);
    match released {
        Ok(mode) => mode,
        // The server is gone with its test.
        Err(_) => std::future::pending().await,
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let mode = released(&mut mode).await;
        if let Some(response) = respond(&buffer[..len], &zone, mode) {
            let _ = socket.send_to(&response, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve_tcp_connection(
            stream,
            Arc::clone(&zone),
            mode.clone(),
        ));
    }
}

async fn serve_tcp_connection(
    mut stream: TcpStream,
    zone: Arc<Mutex<Zone>>,
    mut mode: watch::Receiver<Mode>,
) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0; usize::from(len)];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let mode = released(&mut mode).await;
        let Some(response) = respond(&request, &zone, mode) else {
            return;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

fn respond(request: &[u8], zone: &Mutex<Zone>, mode: Mode) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let mut zone = zone.lock().unwrap();
    *zone
        .queries
        .entry((query.name().clone(), query.query_type()))
        .or_default() += 1;

    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_query(query.clone());
    if mode == Mode::ServFail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    let owner = query.name().clone();
    match zone.records.get(&(owner.clone(), query.query_type())) {
        Some(data) => {
            let ttl = zone.ttl;
            response.add_answers(
                data.iter()
                    .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata.clone())),
            );
        }
        None => {
            let exists = zone.records.keys().any(|(name, _)| *name == owner);
            if !exists {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            // The SOA carries the negative-caching TTL (RFC 2308).
            let soa = SOA::new(
                name("ns.internal."),
                name("admin.internal."),
                1,
                60,
                60,
                600,
                zone.ttl,
            );
            response.add_authority(Record::from_rdata(
                name("internal."),
                zone.ttl,
                RData::SOA(soa),
            ));
        }
    }
    response.to_vec().ok()
}
