//! What the upstream is and how to reach it: plain types with `Default`, apart from any
//! command-line parser (hickory's `ResolverConfig` / `ResolverOpts` split). [`Target`] says
//! where the service is; [`Options`] says how to discover and call it. The defaults are
//! stated here once.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use http::uri::PathAndQuery;
use url::Url;

use crate::call::{HedgePolicy, RetryPolicy, StatusPolicy};
use crate::discovery::CloudMapOptions;
use crate::endpoints::{EjectionPolicy, ProbeKind, ProbePolicy};
use crate::lookup::{RecordKind, TtlBounds};
use crate::select::ZonePolicy;

/// The service to call: a DNS name to discover (Cloud Map's `<service>.<namespace>`) or one
/// fixed address, and the port used with A records and fixed addresses. Parsed from a URL
/// such as `http://name.internal:3000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host: a DNS name to discover, or a fixed address.
    pub host: TargetHost,
    /// The port to call on A-record or fixed endpoints; never 0.
    pub port: u16,
}

/// What a [`Target`]'s host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A DNS name, discovered and refreshed; kept fully qualified (trailing dot) so no search
    /// domain is tried.
    Dns(String),
    /// One fixed endpoint.
    Ip(IpAddr),
}

impl Target {
    /// The name to show in messages: the DNS name without its trailing dot, or the address.
    pub fn display_host(&self) -> String {
        match &self.host {
            TargetHost::Dns(name) => name.trim_end_matches('.').to_owned(),
            TargetHost::Ip(ip) => ip.to_string(),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// Accepts `http://<host>[:<port>]` and nothing more: no path, query, credentials or
    /// port 0, each of which would be silently dropped or could never be called.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(value).map_err(|err| err.to_string())?;
        if url.scheme() != "http" {
            return Err(format!("scheme must be http, not {}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not sent; remove them".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("give only scheme, host and port".into());
        }
        let port = url.port_or_known_default().ok_or("no port")?;
        if port == 0 {
            return Err("port 0 cannot be called".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => {
                TargetHost::Dns(format!("{}.", name.trim_end_matches('.')))
            }
            Some(url::Host::Ipv4(ip)) => TargetHost::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => TargetHost::Ip(ip.into()),
            None => return Err("no host".into()),
        };
        Ok(Self { host, port })
    }
}

/// Where the instances are listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// DNS records of the target's name (Cloud Map's DNS, or any DNS server).
    #[default]
    Dns,
    /// Cloud Map's discovery API (`DiscoverInstances`), for the service and namespace of the
    /// target's name unless [`CloudMapOptions`] names them.
    CloudMap,
}

impl FromStr for Source {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "dns" => Ok(Self::Dns),
            "cloudmap" => Ok(Self::CloudMap),
            _ => Err("expected one of dns, cloudmap".into()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns => "dns",
            Self::CloudMap => "cloudmap",
        })
    }
}

/// How to discover and call the upstream. Every field has a default; change what you need:
///
/// ```
/// # use std::time::Duration;
/// let mut options = upstream::Options::default();
/// options.retry.max_attempts = 2;
/// options.ttl.max = Duration::from_secs(10);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the instances are listed: DNS or Cloud Map's API.
    pub source: Source,
    /// How to ask Cloud Map's API, with [`Source::CloudMap`].
    pub cloudmap: CloudMapOptions,
    /// Which records to ask for.
    pub record: RecordKind,
    /// Whether and how picks prefer endpoints in this caller's zone.
    pub zone: ZonePolicy,
    /// The DNS server to ask, or `None` for those of `/etc/resolv.conf`.
    pub dns_server: Option<SocketAddr>,
    /// Bound on one whole lookup; past it the lookup failed and the last answer stays.
    pub dns_timeout: Duration,
    /// Floor and ceiling on how long an answer is kept.
    pub ttl: TtlBounds,
    /// How long an address stays a member after the last DNS answer that carried it, when
    /// answers are capped (8 records rotating, or 1); zero replaces the set with each answer.
    pub membership_ttl: Duration,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// How long an unused connection to an instance stays open.
    pub idle_timeout: Duration,
    /// Most bytes of one answer's body (decoded, for a chunked body); a longer answer is a
    /// failed attempt. The head has its own bound, 64 KiB.
    pub max_answer_bytes: usize,
    /// Which statuses are answers for the caller and which fail the attempt.
    pub answers: StatusPolicy,
    /// Attempts, timeouts, which failures are retried, and the retry budget.
    pub retry: RetryPolicy,
    /// When failing endpoints are ejected, and for how long at least.
    pub ejection: EjectionPolicy,
    /// How endpoints that are new, ejected or failing are probed.
    pub probe: ProbePolicy,
    /// When a second attempt races a slow first one.
    pub hedge: HedgePolicy,
    /// A `Via` entry (RFC 9110 section 7.6.3) to send with each call, such as `1.1 hello`, so
    /// that a service reached back through its own upstream can tell and refuse the loop.
    pub via: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            source: Source::Dns,
            cloudmap: CloudMapOptions::default(),
            record: RecordKind::A,
            zone: ZonePolicy::default(),
            dns_server: None,
            dns_timeout: Duration::from_secs(2),
            ttl: TtlBounds {
                min: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
            membership_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(30),
            max_answer_bytes: 4096,
            answers: StatusPolicy::default(),
            retry: RetryPolicy::default(),
            ejection: EjectionPolicy::default(),
            probe: ProbePolicy::default(),
            hedge: HedgePolicy::default(),
            via: None,
        }
    }
}

impl Options {
    /// Checks what single fields cannot: durations that must not be zero, bounds that must be
    /// ordered. The message names the field as the caller's settings name it, through `name`.
    pub fn validate(&self, name: impl Fn(&'static str) -> &'static str) -> Result<(), String> {
        if self.ttl.min.is_zero() {
            return Err(format!(
                "{} must be above zero: a zero floor would query DNS in a loop",
                name("ttl.min")
            ));
        }
        for (field, duration) in [
            ("dns_timeout", self.dns_timeout),
            ("connect_timeout", self.connect_timeout),
            ("retry.attempt_timeout", self.retry.attempt_timeout),
            ("retry.request_timeout", self.retry.request_timeout),
            ("probe.interval", self.probe.interval),
            ("probe.timeout", self.probe.timeout),
            ("cloudmap.poll_interval", self.cloudmap.poll_interval),
            ("cloudmap.timeout", self.cloudmap.timeout),
        ] {
            if duration.is_zero() {
                return Err(format!("{} must be above zero", name(field)));
            }
        }
        let ordered = [
            ("ttl.min", self.ttl.min, "ttl.max", self.ttl.max),
            (
                "retry.attempt_timeout",
                self.retry.attempt_timeout,
                "retry.request_timeout",
                self.retry.request_timeout,
            ),
            (
                "hedge.min_delay",
                self.hedge.min_delay,
                "hedge.max_delay",
                self.hedge.max_delay,
            ),
            (
                "cloudmap.poll_interval",
                self.cloudmap.poll_interval,
                "cloudmap.full_interval",
                self.cloudmap.full_interval,
            ),
            (
                "ejection.base_time",
                self.ejection.base_time,
                "ejection.max_time",
                self.ejection.max_time,
            ),
        ];
        for (low, low_value, high, high_value) in ordered {
            if low_value > high_value {
                return Err(format!("{} must not exceed {}", name(low), name(high)));
            }
        }
        self.retry
            .validate()
            .map_err(|(field, reason)| format!("{} {reason}", name(field)))?;
        check_probe(&self.probe.kind).map_err(|reason| format!("{} {reason}", name("probe.path")))
    }
}

/// An HTTP/1.1 probe's path must be a path, such as `/healthz`, and nothing more.
fn check_probe(kind: &ProbeKind) -> Result<(), &'static str> {
    match kind {
        ProbeKind::Http1 { path }
            if !path.starts_with('/') || path.parse::<PathAndQuery>().is_err() =>
        {
            Err("must be a path such as /healthz")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_probe_needs_a_path() {
        let mut options = Options::default();
        assert_eq!(options.validate(|field| field), Ok(()));
        options.probe.kind = ProbeKind::Http1 {
            path: "healthz".into(),
        };
        assert_eq!(
            options.validate(|field| field),
            Err("probe.path must be a path such as /healthz".into())
        );
        options.probe.kind = ProbeKind::Http2;
        assert_eq!(options.validate(|field| field), Ok(()));
    }
}
