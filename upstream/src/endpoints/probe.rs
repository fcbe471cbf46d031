//! Active health checking beside outlier detection (Envoy's pairing): a background task
//! probes the endpoints that need it (new ones that have never answered, ejected ones, and
//! failing ones the ejection cap keeps in), off the request path, each probe with its own
//! small timeout. An ejected endpoint comes back only when its probe answers; an endpoint
//! whose probe fails while others answer is dead and is ejected whatever the cap.
//!
//! While the set is watched (a tower discover stream is open), the calls are made by
//! someone else and never recorded here, so a proven endpoint that stops answering would go
//! unnoticed: then every endpoint is probed each round, those that need it first.
//!
//! A probe is `GET <path>` on the endpoint's own HTTP/1.1 connection pool, HTTP/2's
//! connection prefaces on a new connection, or a bare TCP connect ([`ProbeKind`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Endpoint, EndpointSet, Probed, Tier};

/// Most probes in flight at once; the rest wait for the next round.
const MAX_PROBES_PER_ROUND: usize = 64;

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4,
/// <https://www.rfc-editor.org/rfc/rfc9113#section-3.4>), followed by the SETTINGS frame the
/// preface must include, here empty: length 0, type 0x4, no flags, stream 0.
const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A frame header's length (RFC 9113 section 4.1): 24-bit length, type, flags, 31-bit stream.
const FRAME_HEADER_LEN: usize = 9;

/// The SETTINGS frame type and its ACK flag (RFC 9113 section 6.5).
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// GOAWAY with last stream 0 and NO_ERROR, sent before closing a probe's connection, as
/// endpoints should (RFC 9113 section 6.8).
const GOAWAY: &[u8] = &[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// What a probe asks of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET <path> HTTP/1.1` on the endpoint's own connection pool; a 2xx answer passes. For
    /// HTTP/1.1 servers, which is what the crate's own calls speak.
    Http1 {
        /// The path asked for, such as `/healthz`.
        path: String,
    },
    /// HTTP/2's connection prefaces on a new connection: the probe sends the client's
    /// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` and an empty SETTINGS frame) and passes when the
    /// server's, a SETTINGS frame, arrives (RFC 9113 section 3.4). For plain-text HTTP/2
    /// servers such as tonic's without TLS, which never answer HTTP/1.1. It proves that the
    /// server's HTTP/2 layer answers, not that a given service works; it asks for no path.
    Http2,
    /// A TCP connection opens. It proves only that something accepts connections: a server
    /// that accepts and never answers passes. For protocols the other kinds do not speak.
    Tcp,
}

/// How endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    /// What a probe asks; a pass must come within the timeout.
    pub kind: ProbeKind,
    /// Time between rounds; a round also starts at once when new endpoints appear or one is
    /// suspected. While a discover stream is open every endpoint is probed each round, so
    /// this is also how soon a proven endpoint that stops answering is noticed.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
}

impl ProbeKind {
    /// The path an HTTP/1.1 probe asks for; `None` for the kinds that send no request.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Http1 { path } => Some(path),
            Self::Http2 | Self::Tcp => None,
        }
    }
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            kind: ProbeKind::Http1 {
                path: "/healthz".into(),
            },
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeLabels {
    result: &'static str,
}

/// The probing task's inputs.
pub struct Prober {
    set: Arc<EndpointSet>,
    policy: ProbePolicy,
    /// Probes by result: failed, ok.
    results: [Counter; 2],
    /// Where the next round's probes of healthy endpoints start, when there are more than
    /// fit in one round.
    next_healthy: usize,
}

impl Prober {
    /// A prober of `set`'s endpoints; registers `upstream_probes{result}` in `registry`.
    pub fn new(set: Arc<EndpointSet>, policy: ProbePolicy, registry: &mut Registry) -> Self {
        let family = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "upstream_probes",
            "Health probes of endpoints that are new, ejected or failing, by result",
            family.clone(),
        );
        let results =
            ["failed", "ok"].map(|result| family.get_or_create(&ProbeLabels { result }).clone());
        Self {
            set,
            policy,
            results,
            next_healthy: 0,
        }
    }

    /// Probes until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if stop.run_until_cancelled(self.round()).await.is_none() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.policy.interval) => {}
                () = self.set.probe_requested() => {}
            }
        }
    }

    /// Probes every endpoint that is due, at once, and applies the results.
    async fn round(&mut self) {
        let snapshot = self.set.snapshot();
        let now = Instant::now();
        for endpoint in &snapshot.endpoints {
            endpoint.pool().sweep(now);
        }
        let due = self.due(&snapshot.endpoints);
        if due.is_empty() {
            return;
        }
        let mut probes = JoinSet::new();
        for endpoint in due {
            let kind = self.policy.kind.clone();
            let timeout = self.policy.timeout;
            probes.spawn(async move {
                let answered = probe(&endpoint, &kind, timeout).await;
                (endpoint, answered)
            });
        }
        let results = probes.join_all().await;
        let now = Instant::now();
        // Evidence that the network works: a probe answered, or an endpoint not probed is
        // taking traffic successfully.
        let others_answer = results.iter().any(|(_, answered)| *answered)
            || snapshot
                .endpoints
                .iter()
                .any(|endpoint| !endpoint.needs_probe() && endpoint.tier(now) == Tier::Ready);
        for (endpoint, answered) in results {
            self.results[usize::from(answered)].inc();
            match self.set.probed(&endpoint, answered, others_answer, now) {
                Probed::Unchanged => {}
                Probed::Readmitted => {
                    tracing::info!(endpoint = %endpoint.addr(), "endpoint answered its probe; back in service")
                }
                Probed::Ejected(at_least) => {
                    tracing::warn!(endpoint = %endpoint.addr(), ?at_least, "endpoint failed its probe while others answer; ejected")
                }
            }
        }
    }

    /// This round's endpoints, at most [`MAX_PROBES_PER_ROUND`]: those that need a probe,
    /// then, while the set is watched, the healthy ones, taking turns when they do not all fit.
    fn due(&mut self, endpoints: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        let (mut due, healthy): (Vec<_>, Vec<_>) = endpoints
            .iter()
            .cloned()
            .partition(|endpoint| endpoint.needs_probe());
        due.truncate(MAX_PROBES_PER_ROUND);
        if !self.set.is_watched() || healthy.is_empty() {
            return due;
        }
        let room = (MAX_PROBES_PER_ROUND - due.len()).min(healthy.len());
        let start = self.next_healthy % healthy.len();
        due.extend(healthy.iter().cycle().skip(start).take(room).cloned());
        self.next_healthy = start + room;
        due
    }
}

/// One probe of the given kind: true when it passes within `timeout`.
async fn probe(endpoint: &Endpoint, kind: &ProbeKind, timeout: Duration) -> bool {
    let passed = async {
        match kind {
            ProbeKind::Http1 { .. } => http1(endpoint).await,
            ProbeKind::Http2 => http2(endpoint.addr()).await.unwrap_or(false),
            ProbeKind::Tcp => TcpStream::connect(endpoint.addr()).await.is_ok(),
        }
    };
    tokio::time::timeout(timeout, passed).await.unwrap_or(false)
}

/// True when the endpoint answers its HTTP/1.1 probe request with a 2xx. The body is not
/// read: the connection closes with the answer rather than going back to the pool half-read.
async fn http1(endpoint: &Endpoint) -> bool {
    matches!(
        endpoint.pool().send(&endpoint.probe_request(), None, Instant::now()).await,
        Ok(answer) if answer.status().is_success()
    )
}

/// True when the server at `addr` answers HTTP/2's client preface with its own. A server
/// that accepts and never answers holds the probe until its timeout; an HTTP/1.1 server
/// answers `PRI *` with an error status or closes, neither of which is a SETTINGS frame.
async fn http2(addr: SocketAddr) -> io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(CLIENT_PREFACE).await?;
    let mut header = [0; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let passed = is_server_preface(&header);
    if passed {
        // A courtesy; the verdict does not depend on it.
        let _ = stream.write_all(GOAWAY).await;
    }
    Ok(passed)
}

/// True when `header` opens the server connection preface: a SETTINGS frame that is not an
/// acknowledgement, on stream 0, with a length that is a multiple of 6 (RFC 9113 sections
/// 3.4 and 6.5).
fn is_server_preface(header: &[u8; FRAME_HEADER_LEN]) -> bool {
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    header[3] == SETTINGS && header[4] & ACK == 0 && stream == 0 && length.is_multiple_of(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    use tokio::net::TcpListener;

    use crate::endpoints::Discovery;

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A set of `n` endpoints on 10.0.0.x, all proven but the last `unproven`.
    fn set_of(n: u8, unproven: u8) -> Arc<EndpointSet> {
        let set = Arc::new(EndpointSet::for_tests());
        let addrs: BTreeSet<SocketAddr> = (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 3000)))
            .collect();
        set.apply(&addrs, Discovery::Resolved);
        let endpoints = set.snapshot().endpoints.clone();
        for endpoint in &endpoints[..usize::from(n - unproven)] {
            endpoint.record_success();
        }
        set
    }

    fn prober(set: &Arc<EndpointSet>) -> Prober {
        Prober::new(
            Arc::clone(set),
            ProbePolicy::default(),
            &mut Registry::default(),
        )
    }

    /// Probes one endpoint at `addr` with `kind`.
    async fn probe_addr(addr: SocketAddr, kind: ProbeKind) -> bool {
        let set = EndpointSet::for_tests();
        set.apply(&BTreeSet::from([addr]), Discovery::Fixed);
        probe(&set.snapshot().endpoints[0], &kind, TIMEOUT).await
    }

    /// A listener that answers each connection with `answer` once it has read `read` bytes,
    /// then holds it open; with no answer, a black hole that accepts and never answers.
    async fn server(read: usize, answer: Option<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if let Some(answer) = answer {
                    let mut request = vec![0; read];
                    stream.read_exact(&mut request).await.unwrap();
                    stream.write_all(answer).await.unwrap();
                }
                held.push(stream);
            }
        });
        addr
    }

    /// An address where nothing listens.
    async fn refusing() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// The server preface as h2 sends it: SETTINGS with three settings.
    const SERVER_SETTINGS: &[u8] = &[
        0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0, 0, 5, 0, 0, 64, 0,
    ];

    #[test]
    fn the_server_preface_is_a_settings_frame_on_stream_zero() {
        let header = |bytes: &[u8]| <[u8; FRAME_HEADER_LEN]>::try_from(&bytes[..9]).unwrap();
        assert!(is_server_preface(&header(SERVER_SETTINGS)));
        assert!(is_server_preface(&header(&[0, 0, 0, 4, 0, 0, 0, 0, 0])));
        assert!(
            !is_server_preface(&header(&[0, 0, 0, 4, 1, 0, 0, 0, 0])),
            "ACK"
        );
        assert!(
            !is_server_preface(&header(&[0, 0, 6, 4, 0, 0, 0, 0, 1])),
            "stream 1"
        );
        assert!(
            !is_server_preface(&header(&[0, 0, 5, 4, 0, 0, 0, 0, 0])),
            "length 5"
        );
        assert!(!is_server_preface(&header(b"HTTP/1.1 400")), "HTTP/1.1");
    }

    #[tokio::test]
    async fn an_http2_server_passes_the_http2_probe() {
        let addr = server(CLIENT_PREFACE.len(), Some(SERVER_SETTINGS)).await;
        assert!(probe_addr(addr, ProbeKind::Http2).await);
    }

    #[tokio::test]
    async fn a_black_hole_an_http1_server_and_a_refusal_fail_the_http2_probe() {
        let black_hole = server(0, None).await;
        assert!(!probe_addr(black_hole, ProbeKind::Http2).await);
        let http1 = server(
            16,
            Some(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
        )
        .await;
        assert!(!probe_addr(http1, ProbeKind::Http2).await);
        assert!(!probe_addr(refusing().await, ProbeKind::Http2).await);
    }

    #[tokio::test]
    async fn the_tcp_probe_passes_whatever_accepts() {
        assert!(probe_addr(server(0, None).await, ProbeKind::Tcp).await);
        assert!(!probe_addr(refusing().await, ProbeKind::Tcp).await);
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_endpoints_are_probed_only_while_the_set_is_watched() {
        let set = set_of(4, 1);
        let mut prober = prober(&set);
        let unproven = set.snapshot().endpoints[3].addr();
        let due = |prober: &mut Prober| -> Vec<SocketAddr> {
            let endpoints = set.snapshot().endpoints.clone();
            prober.due(&endpoints).iter().map(|e| e.addr()).collect()
        };
        assert_eq!(due(&mut prober), vec![unproven]);
        let _watch = set.watch();
        let watched = due(&mut prober);
        assert_eq!(watched.len(), 4);
        assert_eq!(watched[0], unproven, "those that need a probe first");
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_endpoints_take_turns_when_they_do_not_fit_in_a_round() {
        let set = set_of(70, 0);
        let mut prober = prober(&set);
        let _watch = set.watch();
        let endpoints = set.snapshot().endpoints.clone();
        let first = prober.due(&endpoints);
        let second = prober.due(&endpoints);
        assert_eq!(first.len(), MAX_PROBES_PER_ROUND);
        assert_eq!(second[0].addr(), endpoints[64].addr());
        let probed: BTreeSet<SocketAddr> = first.iter().chain(&second).map(|e| e.addr()).collect();
        assert_eq!(probed.len(), 70);
    }
}
