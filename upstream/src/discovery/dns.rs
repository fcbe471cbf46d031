//! DNS as a discovery source: a service's DNS name to a full snapshot of socket addresses and
//! the TTL it may be kept for, from A records or SRV records (Cloud Map's
//! `1 1 <port> <instance-id>.<service>.<namespace>`). No state and no schedule here; the
//! refresher decides when to ask.
//!
//! Queries go through hickory's name-server pool (server selection, UDP retransmits, TCP
//! when truncated), and each response is read by [`super::response`], which tells an answer
//! from a broken one: hickory's resolver above the pool would report records for other
//! names, records of other types and CNAME loops as "no records" (see that module).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use tokio::task::JoinSet;

use super::response::{self, Chain, Reading};
use crate::lookup::{Answer, Lookup, LookupError, RecordKind};

/// Looks up one service name.
#[derive(Clone)]
pub struct Dns {
    pool: NameServerPool<TokioRuntimeProvider>,
    request: DnsRequestOptions,
    name: String,
    fqdn: Name,
    record: RecordKind,
    port: u16,
    /// Bound on a whole lookup, CNAMEs and SRV targets included.
    timeout: Duration,
}

/// Records found for a name, or why there are none.
type Resolved = Result<Found, Unresolved>;

/// Records of the type asked for a name, at the end of its CNAME chain.
struct Found {
    records: Vec<Record>,
    glue: Vec<Record>,
    ttl: Duration,
}

/// Why a name has no records, before it is worded for the service.
enum Unresolved {
    Negative {
        nxdomain: bool,
        ttl: Option<Duration>,
    },
    Broken(String),
    Failed(String),
}

impl Dns {
    /// A source for `name` (fully qualified) that asks `server`, or the servers of
    /// `/etc/resolv.conf` when `None`. `port` is used for A records.
    pub fn new(
        name: &str,
        record: RecordKind,
        port: u16,
        server: Option<SocketAddr>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut fqdn =
            Name::from_ascii(name).with_context(|| format!("{name} is not a DNS name"))?;
        fqdn.set_fqdn(true);
        let (config, mut options) = match server {
            Some(server) => (one_server(server), ResolverOpts::default()),
            None => hickory_resolver::system_conf::read_system_conf()
                .context("cannot read /etc/resolv.conf")?,
        };
        // The pool sends each query once, retransmitting over UDP within this bound, and
        // keeps no cache (the refresher is the cache) and no hosts file (DNS is the source
        // of truth for the instances): those live in the resolver above it.
        options.timeout = timeout;
        let request = request_options(&options);
        let tls = TlsConfig::new().context("cannot set up the DNS client")?;
        let context = Arc::new(PoolContext::new(options, tls));
        let pool = NameServerPool::from_config(
            config.name_servers,
            context,
            TokioRuntimeProvider::default(),
        );
        Ok(Self {
            pool,
            request,
            name: name.to_owned(),
            fqdn,
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
        let found = self
            .resolve(self.fqdn.clone(), RecordType::A)
            .await
            .map_err(|unresolved| self.error(unresolved, None))?;
        let addrs = addresses(&found.records)
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        Ok(Answer {
            addrs,
            ttl: found.ttl,
            zones: HashMap::new(),
        })
    }

    /// Cloud Map SRV records read `1 1 <port> <instance-id>.<service>.<namespace>`; each
    /// target is resolved to its address, from the additional section when the server sent
    /// it, or else by A lookups made concurrently. Priority and weight are ignored: Cloud Map
    /// sets both to 1. A target `.` means no service there (RFC 2782); a record with port 0
    /// cannot be called.
    async fn lookup_srv(&self) -> Result<Answer, LookupError> {
        let found = self
            .resolve(self.fqdn.clone(), RecordType::SRV)
            .await
            .map_err(|unresolved| self.error(unresolved, None))?;
        let usable = self.usable_srvs(&found)?;
        let (addrs, ttl) = self.resolve_targets(&found, usable).await?;
        if addrs.is_empty() {
            // Every target is gone: no instances.
            let unresolved = Unresolved::Negative {
                nxdomain: false,
                ttl: Some(ttl),
            };
            return Err(self.error(unresolved, None));
        }
        Ok(Answer {
            addrs,
            ttl,
            zones: HashMap::new(),
        })
    }

    /// The SRV records of `found` that name a target (not `.`) on a port other than 0, as
    /// (port, target); none at all is no instances, port 0 only is a broken answer.
    fn usable_srvs(&self, found: &Found) -> Result<Vec<(u16, Name)>, LookupError> {
        let srvs: Vec<_> = found
            .records
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) if !srv.target.is_root() => Some(srv),
                _ => None,
            })
            .collect();
        let usable: Vec<_> = srvs
            .iter()
            .filter(|srv| srv.port != 0)
            .map(|srv| (srv.port, srv.target.clone()))
            .collect();
        if usable.is_empty() {
            let unresolved = if srvs.is_empty() {
                Unresolved::Negative {
                    nxdomain: false,
                    ttl: Some(found.ttl),
                }
            } else {
                Unresolved::Broken("SRV records with port 0 only".into())
            };
            return Err(self.error(unresolved, None));
        }
        Ok(usable)
    }

    /// Each target's addresses, from the glue in `found` or else by A lookups made
    /// concurrently, with the smallest TTL seen. A target that no longer exists is skipped.
    async fn resolve_targets(
        &self,
        found: &Found,
        targets: Vec<(u16, Name)>,
    ) -> Result<(BTreeSet<SocketAddr>, Duration), LookupError> {
        let mut ttl = found.ttl;
        let mut addrs = BTreeSet::new();
        let mut lookups = JoinSet::new();
        for (port, target) in targets {
            let glue: Vec<&Record> = found
                .glue
                .iter()
                .filter(|glue| glue.name == target)
                .collect();
            if glue.is_empty() {
                let dns = self.clone();
                lookups.spawn(async move {
                    let resolved = dns.resolve(target.clone(), RecordType::A).await;
                    (port, target, resolved)
                });
            } else {
                ttl = glue
                    .iter()
                    .map(|glue| record_ttl(glue))
                    .fold(ttl, Duration::min);
                addrs.extend(addresses(glue).map(|ip| SocketAddr::new(ip, port)));
            }
        }
        while let Some(joined) = lookups.join_next().await {
            let (port, target, resolved) = joined.map_err(|err| LookupError::Failed {
                name: self.display_name(),
                reason: format!("target lookup stopped: {err}"),
            })?;
            let found = match resolved {
                Ok(found) => found,
                // The instance left between the two lookups: it is not an instance now.
                Err(Unresolved::Negative { .. }) => continue,
                Err(unresolved) => return Err(self.error(unresolved, Some(&target))),
            };
            ttl = ttl.min(found.ttl);
            addrs.extend(addresses(&found.records).map(|ip| SocketAddr::new(ip, port)));
        }
        Ok((addrs, ttl))
    }

    /// The `record_type` records of `name`, following CNAMEs across responses.
    async fn resolve(&self, name: Name, record_type: RecordType) -> Resolved {
        let mut chain = Chain::new(name);
        loop {
            let query = Query::query(chain.end().clone(), record_type);
            let reply = self
                .pool
                .lookup(query.clone(), self.request)
                .first_answer()
                .await;
            let reading = match reply {
                Ok(response) => response::read(&query, &response, &mut chain),
                Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => {
                    response::read_no_records(&query, &no_records)
                }
                Err(err) => return Err(Unresolved::Failed(err.to_string())),
            };
            match reading {
                Reading::Records { records, glue, ttl } => return Ok(Found { records, glue, ttl }),
                // `read` moved the chain's end on, and a chain has a bound: the loop ends.
                Reading::Follow => {}
                Reading::Negative { nxdomain, ttl } => {
                    return Err(Unresolved::Negative { nxdomain, ttl });
                }
                Reading::Broken(reason) => return Err(Unresolved::Broken(reason)),
            }
        }
    }

    /// The lookup's error for `unresolved`, about the SRV `target` when there is one.
    fn error(&self, unresolved: Unresolved, target: Option<&Name>) -> LookupError {
        let about = |reason: String| match target {
            Some(target) => format!("SRV target {target}: {reason}"),
            None => reason,
        };
        let name = self.display_name();
        match unresolved {
            Unresolved::Negative { nxdomain, ttl } => LookupError::Negative {
                name,
                record: self.record,
                nxdomain,
                ttl,
            },
            Unresolved::Broken(reason) => LookupError::Broken {
                name,
                reason: about(reason),
            },
            Unresolved::Failed(reason) => LookupError::Failed {
                name,
                reason: about(reason),
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

/// The configuration of one server, over UDP and over TCP on its port.
fn one_server(server: SocketAddr) -> ResolverConfig {
    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
        .into_iter()
        .map(|mut connection| {
            connection.port = server.port();
            connection
        })
        .collect();
    let name_server = NameServerConfig::new(server.ip(), true, connections);
    ResolverConfig::from_name_servers(vec![name_server])
}

/// The request options hickory's resolver derives from its options
/// (`Resolver::request_options`, `resolver.rs` line 350).
fn request_options(options: &ResolverOpts) -> DnsRequestOptions {
    let mut request = DnsRequestOptions::default();
    request.recursion_desired = options.recursion_desired;
    request.use_edns = options.edns0;
    request.edns_payload_len = options.edns_payload_len;
    request.case_randomization = options.case_randomization;
    request
}

/// The IPv4 addresses of `records`.
fn addresses<'a>(records: impl IntoIterator<Item = &'a Record>) -> impl Iterator<Item = IpAddr> {
    records.into_iter().filter_map(|record| match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
}

fn record_ttl(record: &Record) -> Duration {
    Duration::from_secs(record.ttl.into())
}
