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

/// A running `name` instance.
pub struct NameInstance {
    pub id: String,
    pub addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl NameInstance {
    /// Starts `name` as instance `id` on `addr`.
    pub async fn start(id: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(id, listener)
    }

    fn serve(id: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let config = name::config::Cli::try_parse_from(["name", "--instance-id", id])
            .unwrap()
            .config;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(name::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            id: id.to_owned(),
            addr,
            task,
            stop: Some(stop),
        }
    }

    /// Kills the instance: the listener and every connection close at once, with no drain, as
    /// when a task crashes.
    pub async fn kill(mut self) {
        self.stop.take();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts `name` instances `n1`, `n2`, ... on 127.0.0.11, 127.0.0.12, ..., all on one port.
pub async fn name_instances(count: u8) -> Vec<NameInstance> {
    'ports: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..count {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11 + i), port)).await {
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
        let config = hello::config::Cli::try_parse_from(argv).unwrap().config;
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

    /// Stops hello as SIGTERM would and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

/// Waits until the DNS server has answered `count` more queries for `owner` than `since`, so
/// that hello has applied at least one answer given after a change.
pub async fn wait_for_queries(
    dns: &DnsServer,
    record_type: hickory_proto::rr::RecordType,
    since: usize,
    count: usize,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if dns.queries(SERVICE, record_type) >= since + count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
