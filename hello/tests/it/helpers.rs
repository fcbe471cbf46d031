//! Spawning the services for the tests: `name` instances on their own loopback addresses and
//! one port, as tasks in a VPC share a port on different addresses; and `hello` pointed at the
//! test DNS server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    'ports: for _ in 0..20 {
        let first = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..count {
            match std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11 + i), port)) {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'ports,
            }
        }
        return listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| NameInstance::serve(&format!("n{}", i + 1), listener))
            .collect();
    }
    panic!("no port free on every loopback address");
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
    /// Starts hello on a free loopback port, discovering `url` through `dns`, with extra
    /// flags `args` (for example `["--dns-min-ttl", "100ms"]`).
    pub async fn start(dns: &DnsServer, url: &str, args: &[&str]) -> Self {
        let dns_server = dns.addr().to_string();
        let mut argv = vec![
            "hello",
            "--instance-id",
            "h1",
            "--name-service-url",
            url,
            "--dns-server",
            &dns_server,
        ];
        argv.extend_from_slice(args);
        let config = common::Cli::<hello::Config>::try_parse_from(argv)
            .unwrap()
            .config;
        config.validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

    /// Polls `GET /` until an answer satisfies `done`, for at most `limit`; returns whether it
    /// did.
    pub async fn until(&self, limit: Duration, mut done: impl FnMut(&Greeting) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(greeting) = self.greet().await
                && done(&greeting)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits until `/readyz` answers 200, for at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.get("/readyz").await.0 == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
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
        mut done: impl FnMut(&str, &[String]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let (state, addrs) = self.known().await;
            if done(&state, &addrs) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
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

/// `count` name instances, all in DNS with records of `ttl` seconds, and a hello discovering
/// them with extra flags `args`, ready.
pub async fn cluster(count: u8, ttl: u32, args: &[&str]) -> (Vec<NameInstance>, DnsServer, Hello) {
    let names = name_instances(count);
    let dns = DnsServer::start(ttl).await;
    dns.set_a(SERVICE, &ips(&names));
    let url = format!("http://name.internal:{}", names[0].addr.port());
    let hello = Hello::start(&dns, &url, args).await;
    assert!(
        hello.wait_ready(Duration::from_secs(5)).await,
        "hello never became ready"
    );
    (names, dns, hello)
}
