//! Spawning the services for the tests: `name` instances on their own loopback addresses and
//! one port, as tasks in a VPC share a port on different addresses; and `hello` pointed at the
//! test DNS server.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Once;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dns_server::DnsServer;

/// The service name hello discovers, as in Cloud Map's default namespace.
pub const SERVICE: &str = "name.internal.";

/// A running `name` instance, on a runtime of its own so that it can die the way a process
/// does.
pub struct NameInstance {
    pub id: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameInstance {
    /// Starts `name` as instance `id` on `addr`.
    pub fn start(id: &str, addr: SocketAddr) -> Self {
        Self::serve(id, std::net::TcpListener::bind(addr).unwrap())
    }

    fn serve(id: &str, listener: std::net::TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let config = common::Cli::<name::Config>::try_parse_from(["name", "--instance-id", id])
            .unwrap()
            .config;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::spawn(name::run(config, listener, std::future::pending()));
                let _ = stopped.await;
            });
            // Dropping the runtime drops every task it runs: the listener and every open
            // connection close at once, with no drain and no graceful shutdown.
            drop(runtime);
        });
        Self {
            id: id.to_owned(),
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Kills the instance, as when a task crashes: connections close mid-flight, the port
    /// refuses new ones.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for NameInstance {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts `name` instances `n1`, `n2`, ... on 127.0.0.11, 127.0.0.12, ..., all on one port.
pub fn name_instances(count: u8) -> Vec<NameInstance> {
    crate::loopback::same_port(count)
        .into_iter()
        .enumerate()
        .map(|(i, listener)| NameInstance::serve(&format!("n{}", i + 1), listener))
        .collect()
}

/// The IPv4 addresses of `instances`, for A records.
pub fn ips(instances: &[NameInstance]) -> Vec<Ipv4Addr> {
    instances
        .iter()
        .map(|instance| match instance.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("instances listen on IPv4 loopback"),
        })
        .collect()
}

/// What hello asks `name`, for tests that call through the front door: `GET /` with
/// `Accept: application/json`.
pub fn name_request() -> upstream::Request {
    upstream::Request::get("/")
        .unwrap()
        .with_header("accept", "application/json")
        .unwrap()
}

/// Decodes `name`'s answer as hello does.
pub fn decode_name(answer: upstream::Answer<'_>) -> Result<common::NameAnswer, String> {
    common::NameAnswer::decode(answer.body())
}

/// Polls `check` every 20 ms until it holds, for at most `limit`; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shows the services' logs on stdout when `TEST_LOG` is set (nextest prints a failing test's
/// output); otherwise logs go nowhere.
fn init_test_log() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            common::telemetry::init_with(
                "hello=debug,name=debug,common=debug",
                std::io::stdout,
                false,
            );
        } else {
            common::telemetry::init_with("off", std::io::sink, false);
        }
    });
}

/// hello's settings as the binary's defaults give them, for a test to change field by field.
pub fn hello_config() -> hello::Config {
    common::Cli::<hello::Config>::try_parse_from(["hello", "--instance-id", "h1"])
        .unwrap()
        .config
}

/// A running `hello`.
pub struct Hello {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// One answer from hello's `GET /`, as JSON.
#[derive(Debug, serde::Deserialize)]
pub struct Greeting {
    pub name_instance: String,
    pub endpoint: String,
    pub attempts: u32,
}

impl Hello {
    /// Starts hello on a free loopback port with `config`.
    pub async fn start(config: hello::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(config, listener).await
    }

    /// Starts hello on `listener` with `config`.
    pub async fn start_on(config: hello::Config, listener: TcpListener) -> Self {
        init_test_log();
        common::ServiceConfig::validate(&config).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hello::run(config, listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            base,
            http,
            stop: Some(stop),
            task,
        }
    }

    /// The address hello listens on, for tests that speak to it over raw sockets.
    pub fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// GETs `path`, returning status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// GETs `/` as JSON; `Err` holds the status and body of a failed request.
    pub async fn greet(&self) -> Result<Greeting, (u16, String)> {
        let response = self
            .http
            .get(&self.base)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        if status == 200 {
            Ok(serde_json::from_str(&body).unwrap())
        } else {
            Err((status, body))
        }
    }

    /// Makes `count` sequential requests and counts answers by `name` instance; panics on a
    /// failed request, naming it.
    pub async fn tally(&self, count: usize) -> HashMap<String, usize> {
        let mut tally = HashMap::new();
        for i in 0..count {
            match self.greet().await {
                Ok(greeting) => *tally.entry(greeting.name_instance).or_default() += 1,
                Err((status, body)) => panic!("request {i} of {count} failed: {status} {body}"),
            }
        }
        tally
    }

    /// Polls `GET /` until an answer satisfies `done`, for at most `limit`.
    pub async fn until(&self, limit: Duration, done: impl Fn(&Greeting) -> bool) -> bool {
        eventually(limit, || async {
            self.greet().await.is_ok_and(|greeting| done(&greeting))
        })
        .await
    }

    /// Waits until `/readyz` answers 200, for at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        eventually(limit, || async { self.get("/readyz").await.0 == 200 }).await
    }

    /// hello's view from `/debug/endpoints`: the discovery state and the endpoint addresses.
    pub async fn known(&self) -> (String, Vec<String>) {
        let (_, body) = self.get("/debug/endpoints").await;
        let debug: serde_json::Value = serde_json::from_str(&body).unwrap();
        let state = debug["discovery"]["state"].as_str().unwrap().to_owned();
        let addrs = debug["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|endpoint| endpoint["address"].as_str().unwrap().to_owned())
            .collect();
        (state, addrs)
    }

    /// Waits until hello's view satisfies `done`, for at most `limit`.
    pub async fn wait_known(
        &self,
        limit: Duration,
        done: impl Fn(&str, &[String]) -> bool,
    ) -> bool {
        eventually(limit, || async {
            let (state, addrs) = self.known().await;
            done(&state, &addrs)
        })
        .await
    }

    /// The value of an unlabelled counter or gauge in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Stops hello as SIGTERM would and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

/// Records a test writes before hello starts.
type Records = Box<dyn FnOnce(&DnsServer)>;

/// `name` instances, a DNS server and a hello discovering them, described then started:
///
/// ```ignore
/// let cluster = Cluster::new(3).ttl(600).configure(|c| c.calls.max_attempts = 2).start().await;
/// ```
pub struct Cluster {
    count: u8,
    in_dns: Option<Range<usize>>,
    ttl: u32,
    url: Option<String>,
    wait_ready: bool,
    records: Option<Records>,
    config: hello::Config,
}

/// A started [`Cluster`].
pub struct Running {
    pub names: Vec<NameInstance>,
    pub dns: DnsServer,
    pub hello: Hello,
}

impl Cluster {
    /// `count` instances, all in DNS with a TTL of 1 s, hello with its defaults.
    pub fn new(count: u8) -> Self {
        Self {
            count,
            in_dns: None,
            ttl: 1,
            url: None,
            wait_ready: true,
            records: None,
            config: hello_config(),
        }
    }

    /// Only these instances (by index) have records at first.
    pub fn in_dns(mut self, instances: Range<usize>) -> Self {
        self.in_dns = Some(instances);
        self
    }

    /// The records' TTL, in seconds.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// Call this URL instead of `http://name.internal:<the instances' port>`.
    pub fn url(mut self, url: &str) -> Self {
        self.url = Some(url.to_owned());
        self
    }

    /// Writes further records before hello starts.
    pub fn records(mut self, write: impl FnOnce(&DnsServer) + 'static) -> Self {
        self.records = Some(Box::new(write));
        self
    }

    /// Start without waiting for hello to be ready.
    pub fn unready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Changes hello's settings.
    pub fn configure(mut self, change: impl FnOnce(&mut hello::Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Starts everything; unless told otherwise, waits until hello is ready.
    pub async fn start(mut self) -> Running {
        let names = if self.count == 0 {
            Vec::new()
        } else {
            name_instances(self.count)
        };
        let dns = DnsServer::start(self.ttl).await;
        let listed = self.in_dns.unwrap_or(0..names.len());
        if !listed.is_empty() {
            dns.set_a(SERVICE, &ips(&names[listed.clone()]));
        }
        if let Some(write) = self.records.take() {
            write(&dns);
        }
        let url = self.url.unwrap_or_else(|| {
            let port = names.first().map_or(1, |instance| instance.addr.port());
            format!("http://name.internal:{port}")
        });
        self.config.upstream.name_service_url = url.parse().unwrap();
        self.config.upstream.dns_server = Some(dns.addr());
        let hello = Hello::start(self.config).await;
        if self.wait_ready {
            // Ready, and every instance in DNS proven by its first probe.
            let proven = eventually(Duration::from_secs(5), || async {
                let (_, body) = hello.get("/debug/endpoints").await;
                let debug: serde_json::Value = serde_json::from_str(&body).unwrap();
                let endpoints = debug["endpoints"].as_array().unwrap();
                !endpoints.is_empty()
                    && endpoints.len() >= listed.len()
                    && endpoints
                        .iter()
                        .all(|endpoint| endpoint["state"] == "healthy")
            })
            .await;
            assert!(proven, "hello never knew every instance as healthy");
        }
        Running { names, dns, hello }
    }
}

/// Milliseconds, for settings.
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A refresh fast enough for tests: floor 100 ms, ceiling 1 s.
pub fn fast_refresh(config: &mut hello::Config) {
    config.dns.dns_min_ttl = ms(100);
    config.dns.dns_max_ttl = Duration::from_secs(1);
}
