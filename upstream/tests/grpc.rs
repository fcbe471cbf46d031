//! gRPC through the discover stream: a tonic client balancing over
//! `Upstream::discover` across tonic servers found in DNS, while one leaves discovery and is
//! stopped and another hangs; and tower's p2c over the same stream.

// Helpers outside `#[test]` functions panic on a broken test environment, as tests do.
#![allow(clippy::unwrap_used)]

#[path = "support/dns_server.rs"]
#[allow(dead_code)]
mod dns_server;
#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod example;
#[path = "support/loopback.rs"]
mod loopback;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use prometheus_client::registry::Registry;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::channel::Change as TonicChange;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use upstream::{Options, ProbeKind, ProbePolicy, TtlBounds, Upstream};

use dns_server::DnsServer;
use example::greeter::{self, HelloReply, HelloRequest, SAY_HELLO};

/// The service's DNS name.
const NAME: &str = "greeter.internal.";
/// Callers making calls at once.
const CALLERS: usize = 3;
/// Most calls per caller, so that the loops are bounded whatever happens.
const MAX_CALLS_PER_CALLER: usize = 20_000;
/// Time between one caller's calls.
const PACE: Duration = Duration::from_millis(2);
/// Longest wait for each step of a test.
const STEP: Duration = Duration::from_secs(20);

// === A proxy that can hang ===

/// A TCP proxy in front of a server that can turn into a black hole: from then on it holds
/// its connections open, new and old, and forwards and answers nothing, as an instance that
/// hangs does. Counts its open connections.
#[derive(Clone)]
struct Proxy {
    black_hole: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Proxy {
    fn start(listener: TcpListener, to: SocketAddr) -> Self {
        let proxy = Self {
            black_hole: watch::Sender::new(false),
            open: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(proxy.clone().accept(listener, to));
        proxy
    }

    async fn accept(self, listener: TcpListener, to: SocketAddr) {
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            if let Ok((client, _)) = accepted {
                tokio::spawn(self.clone().relay(client, to));
            }
        }
    }

    async fn relay(self, mut client: TcpStream, to: SocketAddr) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let mut black_hole = self.black_hole.subscribe();
        let forwarded = async {
            let mut server = TcpStream::connect(to).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await
        };
        let hang = tokio::select! {
            () = self.stop.cancelled() => false,
            _ = forwarded => false,
            _ = black_hole.wait_for(|on| *on) => true,
        };
        if hang {
            // Reads and drops what comes, answers nothing, until the peer or the proxy stops.
            let mut sink = [0; 4096];
            let drain = async { while client.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = drain => {}
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn hang(&self) {
        self.black_hole.send_replace(true);
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

// === Instances ===

/// A Greeter server named `s<n>`, behind a proxy on its own loopback address.
struct Instance {
    addr: SocketAddr,
    name: String,
    proxy: Proxy,
    stop: CancellationToken,
}

impl Instance {
    /// Stops the proxy and the server (gracefully: calls in flight finish).
    fn stop(&self) {
        self.proxy.stop.cancel();
        self.stop.cancel();
    }

    fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("instances listen on IPv4 loopback"),
        }
    }
}

/// Starts `count` instances, their proxies on 127.0.0.11, 127.0.0.12, ..., all on one port,
/// as A records need; the servers behind them on 127.0.0.1.
async fn instances(count: u8) -> Vec<Instance> {
    let listeners = loopback::same_port(count);
    let mut instances = Vec::new();
    for (n, listener) in (1..).zip(listeners) {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = backend.local_addr().unwrap();
        let name = format!("s{n}");
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let server = name.clone();
        tokio::spawn(async move { greeter::serve(backend, &server, shutdown).await });
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        instances.push(Instance {
            addr: listener.local_addr().unwrap(),
            name,
            proxy: Proxy::start(listener, to),
            stop,
        });
    }
    instances
}

/// Options for a quick test: HTTP/2 probes, short TTLs.
fn options(dns: SocketAddr) -> Options {
    Options {
        dns_server: Some(dns),
        ttl: TtlBounds {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        probe: ProbePolicy {
            kind: ProbeKind::Http2,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        },
        ..Options::default()
    }
}

// === What the balanced channel was told, and the calls ===

/// Each change sent to the balanced channel and when: recorded once sent, so a call that
/// starts later is balanced with it applied.
#[derive(Default)]
struct Told(Mutex<Vec<(Instant, bool, SocketAddr)>>);

impl Told {
    fn removal(&self, addr: SocketAddr) -> Option<Instant> {
        let told = self.0.lock().unwrap();
        told.iter()
            .find(|(_, insert, at)| !insert && *at == addr)
            .map(|(when, _, _)| *when)
    }

    fn held(&self) -> BTreeSet<SocketAddr> {
        let mut held = BTreeSet::new();
        for (_, insert, addr) in self.0.lock().unwrap().iter() {
            if *insert {
                held.insert(*addr);
            } else {
                held.remove(addr);
            }
        }
        held
    }
}

/// A balanced channel fed from `upstream` through the example's adapter, with a tap that
/// records what the channel is told.
fn balanced_channel(upstream: &Upstream, told: Arc<Told>) -> Channel {
    let (channel, sender) = Channel::balance_channel(16);
    let (tap, mut tapped) = mpsc::channel(16);
    tokio::spawn(example::feed_balance_channel(
        upstream.discover(example::endpoint),
        tap,
    ));
    tokio::spawn(async move {
        while let Some(change) = tapped.recv().await {
            let (insert, addr) = match &change {
                TonicChange::Insert(addr, _) => (true, *addr),
                TonicChange::Remove(addr) => (false, *addr),
            };
            if sender.send(change).await.is_err() {
                return;
            }
            told.0.lock().unwrap().push((Instant::now(), insert, addr));
        }
    });
    channel
}

/// One call: when it started and ended, and the server that answered or the failure.
struct Call {
    started: Instant,
    ended: Instant,
    outcome: Result<String, Status>,
}

#[derive(Default)]
struct Calls(Mutex<Vec<Call>>);

impl Calls {
    fn record(&self, started: Instant, outcome: Result<String, Status>) {
        let server = outcome.map(|reply| reply.rsplit(' ').next().unwrap_or_default().to_owned());
        self.0.lock().unwrap().push(Call {
            started,
            ended: Instant::now(),
            outcome: server,
        });
    }

    /// The servers that answered calls started at or after `since`.
    fn servers_since(&self, since: Instant) -> BTreeSet<String> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|call| call.started >= since)
            .filter_map(|call| call.outcome.clone().ok())
            .collect()
    }

    /// Calls started at or after `since` that have ended.
    fn count_since(&self, since: Instant) -> usize {
        let calls = self.0.lock().unwrap();
        calls.iter().filter(|call| call.started >= since).count()
    }

    /// The failures, with when each call started and ended.
    fn failures(&self) -> Vec<(Instant, Instant, Status)> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter_map(|call| Some((call.started, call.ended, call.outcome.clone().err()?)))
            .collect()
    }
}

/// Callers calling through `channel` until `stop`, each call bounded.
fn callers(channel: &Channel, calls: &Arc<Calls>, stop: &CancellationToken) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for caller in 0..CALLERS {
        let (channel, calls, stop) = (channel.clone(), Arc::clone(calls), stop.clone());
        tasks.spawn(async move {
            let name = format!("c{caller}");
            for _ in 0..MAX_CALLS_PER_CALLER {
                let started = Instant::now();
                let call = greeter::say_hello(channel.clone(), &name);
                let outcome = tokio::time::timeout(Duration::from_secs(5), call)
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in 5 s")));
                calls.record(started, outcome);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PACE) => {}
                }
            }
        });
    }
    tasks
}

/// Polls `check` every 20 ms until it holds, for at most `limit`; returns whether it did.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

// === Tests ===

/// Three instances in DNS, the upstream discovering them, a balanced channel fed by its
/// stream, and callers calling through the channel until `stop`.
struct Running {
    dns: DnsServer,
    instances: Vec<Instance>,
    upstream: Upstream,
    told: Arc<Told>,
    calls: Arc<Calls>,
    stop: CancellationToken,
    callers: JoinSet<()>,
}

async fn three_instances_called() -> anyhow::Result<Running> {
    let dns = DnsServer::start(0).await;
    let instances = instances(3).await;
    let ips: Vec<Ipv4Addr> = instances.iter().map(Instance::ip).collect();
    dns.set_a(NAME, &ips);
    let port = instances[0].addr.port();
    let target = format!("http://{}:{port}", NAME.trim_end_matches('.'));
    let target = target.parse().map_err(anyhow::Error::msg)?;
    let upstream = Upstream::start(target, options(dns.addr()), &mut Registry::default())?;
    let told = Arc::new(Told::default());
    let channel = balanced_channel(&upstream, Arc::clone(&told));
    let calls = Arc::new(Calls::default());
    let stop = CancellationToken::new();
    let callers = callers(&channel, &calls, &stop);
    Ok(Running {
        dns,
        instances,
        upstream,
        told,
        calls,
        stop,
        callers,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_channel_drops_instances_that_leave_dns_or_hang() -> anyhow::Result<()> {
    let start = Instant::now();
    let Running {
        dns,
        instances,
        upstream,
        told,
        calls,
        stop,
        mut callers,
    } = three_instances_called().await?;
    let names: BTreeSet<String> = instances.iter().map(|i| i.name.clone()).collect();
    assert!(
        eventually(STEP, || calls.servers_since(start) == names).await,
        "every instance answers: {:?}",
        calls.servers_since(start)
    );

    // s3 leaves DNS: the stream removes it, the channel closes its connection once the calls
    // on it are done, and then it stops. No call fails.
    let (s3, s3_addr) = (&instances[2], instances[2].addr);
    dns.set_a(NAME, &[instances[0].ip(), instances[1].ip()]);
    assert!(eventually(STEP, || told.removal(s3_addr).is_some()).await);
    assert!(
        eventually(STEP, || s3.proxy.open() == 0).await,
        "the channel let go of s3"
    );
    s3.stop();
    let removed = told.removal(s3_addr).unwrap_or(start);
    let stopped = Instant::now();
    assert!(eventually(STEP, || calls.count_since(stopped) >= 30).await);
    let failures = calls.failures();
    assert!(
        failures.is_empty(),
        "no call fails while s3 leaves: {failures:?}"
    );
    assert!(!calls.servers_since(removed).contains("s3"));

    // s2 hangs: its probes fail while s1's pass, so it is ejected and the stream removes it.
    // The calls sent to it meanwhile time out; every call after the removal succeeds.
    let (s2, s2_addr) = (&instances[1], instances[1].addr);
    let hung = Instant::now();
    s2.proxy.hang();
    assert!(eventually(STEP, || told.removal(s2_addr).is_some()).await);
    let removed = told.removal(s2_addr).unwrap_or(hung);
    assert!(eventually(STEP, || calls.count_since(removed) >= 30).await);
    stop.cancel();
    while callers.join_next().await.is_some() {}
    for (started, ended, failure) in calls.failures() {
        assert!(ended > hung && started < removed, "{failure:?}");
        assert_eq!(failure.code(), Code::Cancelled, "{failure:?}");
    }
    assert_eq!(calls.servers_since(removed), BTreeSet::from(["s1".into()]));
    assert_eq!(told.held(), BTreeSet::from([instances[0].addr]));
    upstream.shutdown().await
}

#[tokio::test]
async fn tower_p2c_balances_over_the_same_stream() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { greeter::serve(listener, "p", std::future::pending()).await });
    let mut options = Options::default();
    options.probe.kind = ProbeKind::Http2;
    let target = format!("http://{addr}")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let upstream = Upstream::start(target, options, &mut Registry::default())?;

    // One lazily connected channel per endpoint, with the requests in flight as its load.
    let changes = upstream.discover(|addr| example::endpoint(addr).connect_lazy());
    let discover = PendingRequestsDiscover::new(Box::pin(changes), CompleteOnResponse::default());
    let mut grpc = tonic::client::Grpc::new(Balance::new(discover));
    let ready = tokio::time::timeout(STEP, grpc.ready()).await?;
    ready.map_err(|err| anyhow::anyhow!(err))?;
    let request = Request::new(HelloRequest { name: "p2c".into() });
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let reply = grpc
        .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
        .await?;
    assert_eq!(reply.into_inner().message, "Hello p2c from p");
    upstream.shutdown().await
}
