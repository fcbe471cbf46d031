//! The `hello` service's settings. Every field is a flag and an environment variable of the
//! same name (`--dns-max-ttl`, `DNS_MAX_TTL`); durations are written `500ms`, `2s`, `1m`.
//!
//! "Where" (the service to find, the DNS server to ask) is apart from "how" (TTL bounds,
//! timeouts, retries, ejection), after hickory's `ResolverConfig` / `ResolverOpts`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::Listen;
use common::config::parse_duration;

use upstream::{
    CloudMapOptions, EjectionPolicy, HedgePolicy, Options, ProbeKind, ProbePolicy, RecordKind,
    RetryPolicy, Source, StatusPolicy, Target, TtlBounds, ZonePolicy,
};

/// The name hello gives itself in the `Via` header of its calls (RFC 9110 section 7.6.3); a
/// request that arrives carrying it has come back around, and is refused.
pub const VIA_PSEUDONYM: &str = "hello";

/// The service `hello` calls unless told otherwise: Cloud Map service `name` in the private
/// DNS namespace `internal`, on the port both services use.
pub const DEFAULT_NAME_SERVICE_URL: &str = "http://name.internal:3000";

/// What `hello --help` says the binary does.
pub const ABOUT: &str = "Greets with a name from the name service, found through DNS.";

/// Settings for one `hello` instance.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where to listen and how to name this instance.
    #[command(flatten)]
    pub listen: Listen,

    /// What to call and how to find it.
    #[command(flatten)]
    pub upstream: Upstream,

    /// How to resolve and refresh.
    #[command(flatten)]
    pub dns: DnsOptions,

    /// How to ask Cloud Map's API, with `DISCOVERY=cloudmap`.
    #[command(flatten)]
    pub cloudmap: CloudMapArgs,

    /// How to call: timeouts, retries, ejection.
    #[command(flatten)]
    pub calls: CallOptions,

    /// The access log and the EMF metrics.
    #[command(flatten)]
    pub telemetry: common::Telemetry,
}

/// Where the `name` service is.
#[derive(Debug, Clone, clap::Args)]
pub struct Upstream {
    /// The service to call. Its host is the DNS name to discover (`<service>.<namespace>` in
    /// Cloud Map) or an IP address (one fixed endpoint, no DNS); its port is used with A records.
    #[arg(long, env = "NAME_SERVICE_URL", default_value = DEFAULT_NAME_SERVICE_URL, value_parser = clap::value_parser!(Target))]
    pub name_service_url: Target,

    /// Where the instances are listed: `dns` (records of the URL's host) or `cloudmap` (Cloud
    /// Map's `DiscoverInstances` API for the service and namespace of the URL's host; no
    /// 8-record cap, zones known). The API's endpoint, region and credentials come from the
    /// AWS SDK's standard settings (`AWS_REGION`, `AWS_ENDPOINT_URL_SERVICEDISCOVERY`, the
    /// task role).
    #[arg(long, env = "DISCOVERY", default_value_t = Source::Dns, value_parser = clap::value_parser!(Source))]
    pub discovery: Source,

    /// Which records to ask for: `a` (addresses; the port comes from the URL) or `srv` (the
    /// port of each instance comes from its record, as Cloud Map SRV records carry it).
    #[arg(long, env = "DISCOVERY_RECORD", default_value_t = RecordKind::A, value_parser = clap::value_parser!(RecordKind))]
    pub discovery_record: RecordKind,

    /// DNS server to ask, `ip` or `ip:port`; by default the servers in `/etc/resolv.conf`
    /// (in a VPC, the Amazon-provided resolver).
    #[arg(long, env = "DNS_SERVER", value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,
}

/// How discovery refreshes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DnsOptions {
    /// Floor under an answer's TTL: a TTL of 0 must not mean a DNS query per request.
    #[arg(long, env = "DNS_MIN_TTL", default_value = "1s", value_parser = parse_duration)]
    pub dns_min_ttl: Duration,

    /// Ceiling over an answer's TTL: a long TTL must not hide scaling for minutes.
    #[arg(long, env = "DNS_MAX_TTL", default_value = "30s", value_parser = parse_duration)]
    pub dns_max_ttl: Duration,

    /// How long an instance stays known after the last DNS answer that listed it, when answers
    /// are capped (MULTIVALUE's random 8 of more, WEIGHTED's one) so that each lists only some
    /// instances; one whose health probe fails leaves at once. `0s` replaces the set with each
    /// answer.
    #[arg(long, env = "DNS_MEMBERSHIP_TTL", default_value = "60s", value_parser = parse_duration)]
    pub dns_membership_ttl: Duration,

    /// How long one lookup may take before it counts as failed and the last good answer is
    /// kept.
    #[arg(long, env = "DNS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dns_timeout: Duration,
}

/// How Cloud Map's API is asked (`DISCOVERY=cloudmap`).
#[derive(Debug, Clone, clap::Args)]
pub struct CloudMapArgs {
    /// The namespace's name; by default the URL's host without its first label.
    #[arg(long, env = "CLOUDMAP_NAMESPACE")]
    pub cloudmap_namespace: Option<String>,

    /// The service's name; by default the first label of the URL's host.
    #[arg(long, env = "CLOUDMAP_SERVICE")]
    pub cloudmap_service: Option<String>,

    /// Only instances with these attribute values, `KEY=VALUE[,KEY=VALUE...]`, for example
    /// `ECS_TASK_DEFINITION_FAMILY=name` to pin a task definition family.
    #[arg(long, env = "CLOUDMAP_QUERY", value_parser = parse_query)]
    pub cloudmap_query: Option<Query>,

    /// The account that owns the namespace, when it is shared from another account.
    #[arg(long, env = "CLOUDMAP_OWNER_ACCOUNT", value_parser = parse_account)]
    pub cloudmap_owner_account: Option<String>,

    /// Time between `DiscoverInstancesRevision` polls (a random fifth more at most).
    #[arg(long, env = "CLOUDMAP_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub cloudmap_poll_interval: Duration,

    /// Longest time between two full `DiscoverInstances` calls; health changes do not move
    /// the revision, so this is how soon they are seen.
    #[arg(long, env = "CLOUDMAP_FULL_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub cloudmap_full_interval: Duration,

    /// Time one API call may take, the SDK's retries included.
    #[arg(long, env = "CLOUDMAP_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub cloudmap_timeout: Duration,

    /// Prefer `name` instances in hello's own availability zone, in Envoy's proportions, when
    /// the zones are known (Cloud Map's API gives them; DNS does not).
    #[arg(long, env = "ZONE_AWARE", default_value_t = true, action = clap::ArgAction::Set)]
    pub zone_aware: bool,

    /// Fewest instances for zone-aware picking; below it, picks ignore zones.
    #[arg(long, env = "ZONE_AWARE_MIN_SIZE", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub zone_aware_min_size: u32,

    /// hello's own availability zone; by default read from the ECS task metadata.
    #[arg(long, env = "ZONE")]
    pub zone: Option<String>,
}

/// Attribute filters of `CLOUDMAP_QUERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query(pub BTreeMap<String, String>);

fn parse_query(value: &str) -> Result<Query, String> {
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(format!("expected KEY=VALUE, got {pair:?}")),
        })
        .collect::<Result<_, _>>()
        .map(Query)
}

fn parse_account(value: &str) -> Result<String, String> {
    if value.len() == 12 && value.bytes().all(|byte| byte.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err("expected a 12-digit AWS account id".into())
    }
}

/// How requests to `name` are made.
#[derive(Debug, Clone, clap::Args)]
pub struct CallOptions {
    /// Attempts per request, the first included; each retry goes to another endpoint.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,

    /// Time allowed to open a connection. A task that is gone often drops packets rather than
    /// refusing them, so this is what a failover costs.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for one attempt, connection included.
    #[arg(long, env = "ATTEMPT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub attempt_timeout: Duration,

    /// Time allowed for a whole request to `hello`, all attempts included; past it the answer
    /// is a 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Retries allowed as a share of requests over the last ten seconds, in percent.
    #[arg(long, env = "RETRY_BUDGET_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub retry_budget_percent: u32,

    /// Retries allowed per second whatever the request rate, so that low traffic can retry.
    #[arg(long, env = "RETRY_BUDGET_MIN_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub retry_budget_min_per_second: u32,

    /// Consecutive failures (connect error, timeout, 5xx) that eject an endpoint.
    #[arg(long, env = "EJECT_AFTER_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after_failures: u32,

    /// First ejection's length; each further ejection of the same endpoint doubles it.
    #[arg(long, env = "EJECT_BASE_TIME", default_value = "2s", value_parser = parse_duration)]
    pub eject_base_time: Duration,

    /// Longest ejection.
    #[arg(long, env = "EJECT_MAX_TIME", default_value = "30s", value_parser = parse_duration)]
    pub eject_max_time: Duration,

    /// Most endpoints ejected at once as outliers, in percent of the set (at least one may
    /// always be); endpoints whose health probes fail while others answer do not count.
    #[arg(long, env = "EJECT_MAX_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub eject_max_percent: u32,

    /// Time between health probes of endpoints that are new, ejected or failing.
    #[arg(long, env = "PROBE_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub probe_interval: Duration,

    /// Time one health probe may take.
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub probe_timeout: Duration,

    /// The path health probes ask for; any 2xx answer is a pass. An instance that does not
    /// serve it is taken for dead once another answers.
    #[arg(long, env = "PROBE_PATH", default_value = "/healthz", value_parser = parse_probe_path)]
    pub probe_path: String,

    /// Send a second attempt to another endpoint when the first is slow.
    #[arg(long, env = "HEDGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub hedge: bool,

    /// Shortest wait before a hedge, whatever recent latency says.
    #[arg(long, env = "HEDGE_MIN_DELAY", default_value = "10ms", value_parser = parse_duration)]
    pub hedge_min_delay: Duration,

    /// Longest wait before a hedge; also the wait while recent latency is unknown.
    #[arg(long, env = "HEDGE_MAX_DELAY", default_value = "250ms", value_parser = parse_duration)]
    pub hedge_max_delay: Duration,

    /// Most bytes read from one answer of `name`; a longer one is a failed attempt.
    #[arg(long, env = "MAX_ANSWER_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub max_answer_bytes: u32,
}

impl Config {
    /// The service to call.
    pub fn target(&self) -> Target {
        self.upstream.name_service_url.clone()
    }

    /// The upstream's options, with hello's zone: `ZONE` when set, else `task_zone`, the
    /// availability zone the task metadata names (read once, at start, with the instance's
    /// identity).
    pub fn options(&self, task_zone: Option<String>) -> Options {
        let mut options = Options::from(self);
        if options.zone.local.is_none() {
            options.zone.local = task_zone.filter(|zone| !zone.is_empty());
        }
        options
    }
}

impl From<&Config> for Options {
    fn from(config: &Config) -> Self {
        let (dns, calls) = (&config.dns, &config.calls);
        let cloudmap = &config.cloudmap;
        Self {
            source: config.upstream.discovery,
            cloudmap: CloudMapOptions {
                namespace: cloudmap.cloudmap_namespace.clone(),
                service: cloudmap.cloudmap_service.clone(),
                query: cloudmap
                    .cloudmap_query
                    .clone()
                    .map(|query| query.0)
                    .unwrap_or_default(),
                owner_account: cloudmap.cloudmap_owner_account.clone(),
                poll_interval: cloudmap.cloudmap_poll_interval,
                full_interval: cloudmap.cloudmap_full_interval,
                timeout: cloudmap.cloudmap_timeout,
                sdk: None,
            },
            zone: ZonePolicy {
                enabled: cloudmap.zone_aware,
                min_size: cloudmap.zone_aware_min_size as usize,
                local: cloudmap.zone.clone().filter(|zone| !zone.is_empty()),
            },
            record: config.upstream.discovery_record,
            dns_server: config.upstream.dns_server,
            dns_timeout: dns.dns_timeout,
            membership_ttl: dns.dns_membership_ttl,
            ttl: TtlBounds {
                min: dns.dns_min_ttl,
                max: dns.dns_max_ttl,
            },
            connect_timeout: calls.connect_timeout,
            retry: RetryPolicy {
                max_attempts: calls.max_attempts,
                attempt_timeout: calls.attempt_timeout,
                request_timeout: calls.request_timeout,
                budget_percent: calls.retry_budget_percent,
                budget_min_per_second: calls.retry_budget_min_per_second,
            },
            ejection: EjectionPolicy {
                after_failures: calls.eject_after_failures,
                base_time: calls.eject_base_time,
                max_time: calls.eject_max_time,
                max_percent: calls.eject_max_percent,
            },
            probe: ProbePolicy {
                kind: ProbeKind::Http1 {
                    path: calls.probe_path.clone(),
                },
                interval: calls.probe_interval,
                timeout: calls.probe_timeout,
            },
            hedge: HedgePolicy {
                enabled: calls.hedge,
                min_delay: calls.hedge_min_delay,
                max_delay: calls.hedge_max_delay,
            },
            max_answer_bytes: calls.max_answer_bytes as usize,
            // hello's request carries no user input: any status but 2xx says something about
            // the instance (a reused task address answering 404), and is tried elsewhere.
            answers: StatusPolicy::SuccessOnly,
            via: Some(format!("1.1 {VIA_PSEUDONYM}")),
            ..Options::default()
        }
    }
}

impl common::ServiceConfig for Config {
    fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Checks what single fields cannot (durations that must not be zero, bounds that must be
    /// ordered), once, at parse time; the message names the variables.
    fn validate(&self) -> Result<(), String> {
        Options::from(self).validate(variable)
    }
}

/// The variable that sets an [`Options`] field.
fn variable(field: &'static str) -> &'static str {
    match field {
        "ttl.min" => "DNS_MIN_TTL",
        "ttl.max" => "DNS_MAX_TTL",
        "dns_timeout" => "DNS_TIMEOUT",
        "connect_timeout" => "CONNECT_TIMEOUT",
        "retry.attempt_timeout" => "ATTEMPT_TIMEOUT",
        "retry.request_timeout" => "REQUEST_TIMEOUT",
        "retry.max_attempts" => "MAX_ATTEMPTS",
        "retry.budget_percent" => "RETRY_BUDGET_PERCENT",
        "retry.budget_min_per_second" => "RETRY_BUDGET_MIN_PER_SECOND",
        "ejection.base_time" => "EJECT_BASE_TIME",
        "ejection.max_time" => "EJECT_MAX_TIME",
        "probe.interval" => "PROBE_INTERVAL",
        "probe.timeout" => "PROBE_TIMEOUT",
        "hedge.min_delay" => "HEDGE_MIN_DELAY",
        "hedge.max_delay" => "HEDGE_MAX_DELAY",
        "max_answer_bytes" => "MAX_ANSWER_BYTES",
        "cloudmap.poll_interval" => "CLOUDMAP_POLL_INTERVAL",
        "cloudmap.full_interval" => "CLOUDMAP_FULL_INTERVAL",
        "cloudmap.timeout" => "CLOUDMAP_TIMEOUT",
        other => other,
    }
}

fn parse_probe_path(value: &str) -> Result<String, String> {
    match value.parse::<axum::http::Uri>() {
        Ok(uri) if value.starts_with('/') && uri.scheme().is_none() => Ok(value.to_owned()),
        _ => Err("expected a path such as /healthz".into()),
    }
}

fn parse_dns_server(value: &str) -> Result<SocketAddr, String> {
    value
        .parse::<SocketAddr>()
        .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| "expected ip or ip:port".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        common::Cli::<Config>::try_parse_from(std::iter::once("hello").chain(args.iter().copied()))
            .map(|cli| cli.config)
    }

    use common::ServiceConfig;

    use upstream::TargetHost;

    #[test]
    fn defaults_find_name_in_the_internal_namespace() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            config.target(),
            Target {
                host: TargetHost::Dns("name.internal.".into()),
                port: 3000
            }
        );
        assert_eq!(config.upstream.discovery_record, RecordKind::A);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_variables_defaults_are_the_upstream_defaults() {
        let config = parse(&[]).unwrap();
        let options = Options::from(&config);
        let defaults = Options::default();
        assert_eq!(options.record, defaults.record);
        assert_eq!(options.source, defaults.source);
        assert_eq!(
            options.cloudmap.poll_interval,
            defaults.cloudmap.poll_interval
        );
        assert_eq!(
            options.cloudmap.full_interval,
            defaults.cloudmap.full_interval
        );
        assert_eq!(options.cloudmap.timeout, defaults.cloudmap.timeout);
        assert_eq!(options.zone, defaults.zone);
        assert_eq!(options.membership_ttl, defaults.membership_ttl);
        assert_eq!(options.dns_timeout, defaults.dns_timeout);
        assert_eq!(options.ttl, defaults.ttl);
        assert_eq!(options.connect_timeout, defaults.connect_timeout);
        assert_eq!(options.retry, defaults.retry);
        assert_eq!(options.ejection, defaults.ejection);
        assert_eq!(options.probe, defaults.probe);
        assert_eq!(options.hedge, defaults.hedge);
        assert_eq!(options.max_answer_bytes, defaults.max_answer_bytes);
    }

    #[test]
    fn an_ip_literal_is_a_fixed_endpoint() {
        let url: Target = "http://127.0.0.1:3001".parse().unwrap();
        assert_eq!(url.host, TargetHost::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(url.port, 3001);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--name-service-url", "https://name.internal"][..],
            &["--name-service-url", "not a url"],
            &["--name-service-url", "http://name.internal:3000/path"],
            &["--name-service-url", "http://name.internal:0"],
            &["--name-service-url", "http://user:pw@name.internal:3000"],
            &["--discovery-record", "mx"],
            &["--dns-server", "dns.example"],
            &["--dns-min-ttl", "soon"],
            &["--max-attempts", "0"],
            &["--request-timeout", "400d"],
            &["--discovery", "consul"],
            &["--cloudmap-query", "novalue"],
            &["--cloudmap-owner-account", "12345"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn cloudmap_settings_reach_the_options() {
        let config = parse(&[
            "--discovery",
            "cloudmap",
            "--cloudmap-query",
            "ECS_TASK_DEFINITION_FAMILY=name, stage=canary",
            "--cloudmap-owner-account",
            "111122223333",
            "--cloudmap-poll-interval",
            "2s",
            "--zone",
            "eu-west-1a",
        ])
        .unwrap();
        let options = Options::from(&config);
        assert_eq!(options.source, Source::CloudMap);
        assert_eq!(
            options.cloudmap.query,
            BTreeMap::from([
                ("ECS_TASK_DEFINITION_FAMILY".into(), "name".into()),
                ("stage".into(), "canary".into()),
            ])
        );
        assert_eq!(
            options.cloudmap.owner_account.as_deref(),
            Some("111122223333")
        );
        assert_eq!(options.cloudmap.poll_interval, Duration::from_secs(2));
        assert_eq!(options.zone.local.as_deref(), Some("eu-west-1a"));
        let options = config.options(Some("eu-west-1b".into()));
        assert_eq!(
            options.zone.local.as_deref(),
            Some("eu-west-1a"),
            "ZONE wins"
        );
        assert!(config.validate().is_ok());
        let config = parse(&["--cloudmap-poll-interval", "20s"]).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("CLOUDMAP_FULL_INTERVAL")
        );
    }

    #[test]
    fn the_task_zone_is_hellos_zone_unless_zone_is_set() {
        let config = parse(&[]).unwrap();
        let options = config.options(Some("eu-west-1c".into()));
        assert_eq!(options.zone.local.as_deref(), Some("eu-west-1c"));
        assert_eq!(config.options(None).zone.local, None);
    }

    #[test]
    fn dns_server_port_defaults_to_53() {
        let config = parse(&["--dns-server", "10.0.0.2"]).unwrap();
        assert_eq!(
            config.upstream.dns_server,
            Some("10.0.0.2:53".parse().unwrap())
        );
    }

    #[test]
    fn bounds_must_be_ordered() {
        let config = parse(&["--dns-min-ttl", "10s", "--dns-max-ttl", "5s"]).unwrap();
        assert!(config.validate().is_err());
        let config = parse(&["--dns-min-ttl", "0s"]).unwrap();
        assert!(config.validate().is_err());
        let config = parse(&["--attempt-timeout", "0s"]).unwrap();
        assert!(config.validate().unwrap_err().contains("ATTEMPT_TIMEOUT"));
    }
}
