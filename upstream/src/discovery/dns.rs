//! DNS as a discovery source: a service's DNS name to a full snapshot of socket addresses and
//! the TTL it may be kept for, from A records or SRV records (Cloud Map's
//! `1 1 <port> <instance-id>.<service>.<namespace>`). No state and no schedule here; the
//! refresher decides when to ask.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record};
use tokio::task::JoinSet;

use crate::lookup::{Answer, Lookup, LookupError, RecordKind};

/// Looks up one service name.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    name: String,
    record: RecordKind,
    port: u16,
    /// Bound on a whole lookup, SRV targets included.
    timeout: Duration,
}

impl Dns {
    /// A resolver for `name` (fully qualified) that asks `server`, or the servers of
    /// `/etc/resolv.conf` when `None`. `port` is used for A records.
    pub fn new(
        name: &str,
        record: RecordKind,
        port: u16,
        server: Option<SocketAddr>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut builder = match server {
            Some(server) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut connection| {
                        connection.port = server.port();
                        connection
                    })
                    .collect();
                let name_server = NameServerConfig::new(server.ip(), true, connections);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().context("cannot read /etc/resolv.conf")?,
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        // No retries inside hickory (`attempts` counts retries): a failed refresh keeps the
        // last answer and is retried by the refresher on its own schedule.
        opts.attempts = 0;
        // The refresher is the cache. hickory's cache would answer from memory for as long as
        // the record's TTL (600 s from Docker's DNS) and hide every change the refresher asks
        // about; a capacity of 0 turns it off.
        opts.cache_size = 0;
        // DNS is the source of truth for the instances, not /etc/hosts.
        opts.use_hosts_file = ResolveHosts::Never;
        let resolver = builder.build().context("cannot build the DNS resolver")?;
        Ok(Self {
            resolver,
            name: name.to_owned(),
            record,
            port,
            timeout,
        })
    }

    /// The name looked up, fully qualified.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks DNS once for every instance, within the configured timeout.
    pub async fn lookup(&self) -> Result<Answer, LookupError> {
        let lookup = async {
            match self.record {
                RecordKind::A => self.lookup_a().await,
                RecordKind::Srv => self.lookup_srv().await,
            }
        };
        tokio::time::timeout(self.timeout, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(LookupError::Failed {
                    name: self.display_name(),
                    reason: format!("no answer within {:?}", self.timeout),
                })
            })
    }

    async fn lookup_a(&self) -> Result<Answer, LookupError> {
        let lookup = self
            .resolver
            .ipv4_lookup(self.name.as_str())
            .await
            .map_err(|err| self.error(err))?;
        let (ips, ttl) = addresses(lookup.answers());
        let addrs = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        self.answer(addrs, ttl)
    }

    /// Cloud Map SRV records read `1 1 <port> <instance-id>.<service>.<namespace>`; each
    /// target is resolved to its address, from the additional section when the server sent
    /// it, or else by A lookups made concurrently. Priority and weight are ignored: Cloud Map
    /// sets both to 1.
    async fn lookup_srv(&self) -> Result<Answer, LookupError> {
        let lookup = self
            .resolver
            .srv_lookup(self.name.as_str())
            .await
            .map_err(|err| self.error(err))?;
        let mut ttl = min_ttl(lookup.answers());
        let mut addrs = BTreeSet::new();
        let mut targets = JoinSet::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let (ips, glue_ttl) = addresses(
                lookup
                    .additionals()
                    .iter()
                    .filter(|glue| glue.name == srv.target),
            );
            if ips.is_empty() {
                let resolver = self.resolver.clone();
                let (port, target) = (srv.port, srv.target.clone());
                targets.spawn(async move { (port, resolver.ipv4_lookup(target).await) });
            } else {
                ttl = min_option(ttl, glue_ttl);
                addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, srv.port)));
            }
        }
        while let Some(joined) = targets.join_next().await {
            let (port, result) = joined.map_err(|err| LookupError::Failed {
                name: self.display_name(),
                reason: format!("target lookup stopped: {err}"),
            })?;
            let (ips, target_ttl) = match result {
                Ok(target) => addresses(target.answers()),
                // The instance left between the two lookups: it is not an instance now.
                Err(err) if err.is_no_records_found() => continue,
                Err(err) => return Err(self.error(err)),
            };
            ttl = min_option(ttl, target_ttl);
            addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
        }
        self.answer(addrs, ttl)
    }

    fn answer(
        &self,
        addrs: BTreeSet<SocketAddr>,
        ttl: Option<Duration>,
    ) -> Result<Answer, LookupError> {
        if addrs.is_empty() {
            return Err(LookupError::Negative {
                name: self.display_name(),
                record: self.record,
                nxdomain: false,
                ttl,
            });
        }
        Ok(Answer {
            addrs,
            ttl: ttl.unwrap_or_default(),
            zones: HashMap::new(),
        })
    }

    fn error(&self, err: NetError) -> LookupError {
        match &err {
            NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(no_records)) => {
                LookupError::Negative {
                    name: self.display_name(),
                    record: self.record,
                    nxdomain: no_records.response_code == ResponseCode::NXDomain,
                    ttl: no_records
                        .negative_ttl
                        .map(|ttl| Duration::from_secs(ttl.into())),
                }
            }
            _ => LookupError::Failed {
                name: self.display_name(),
                reason: err.to_string(),
            },
        }
    }

    fn display_name(&self) -> String {
        self.name.trim_end_matches('.').to_owned()
    }
}

impl Lookup for Dns {
    fn name(&self) -> &str {
        Dns::name(self)
    }

    fn lookup(&self) -> impl std::future::Future<Output = Result<Answer, LookupError>> + Send {
        Dns::lookup(self)
    }
}

/// The IPv4 addresses among `records`, and their smallest TTL.
fn addresses<'a>(records: impl IntoIterator<Item = &'a Record>) -> (Vec<IpAddr>, Option<Duration>) {
    let mut ips = Vec::new();
    let mut ttl = None;
    for record in records {
        if let RData::A(a) = &record.data {
            ips.push(IpAddr::V4(a.0));
            ttl = min_option(ttl, Some(Duration::from_secs(record.ttl.into())));
        }
    }
    (ips, ttl)
}

fn min_ttl(records: &[Record]) -> Option<Duration> {
    records
        .iter()
        .map(|record| Duration::from_secs(record.ttl.into()))
        .min()
}

fn min_option(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
