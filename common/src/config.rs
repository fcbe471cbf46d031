//! Settings every service has: where it listens and who it is. Each service flattens
//! [`Listen`] into its own clap settings struct, so a flag and its variable (`--port`, `PORT`)
//! are declared once.

use std::error::Error as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use crate::request_log::AccessLog;

/// The port both services listen on unless told otherwise; the CloudFormation templates and
/// the compose file use the same number.
pub const DEFAULT_PORT: u16 = 3000;

/// Where the service listens and how it names itself.
#[derive(Debug, Clone, clap::Args)]
pub struct Listen {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// This instance's name in answers and logs; when unset, the ECS task (short id and
    /// availability zone) or else the hostname.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// The ECS task metadata endpoint v4; ECS sets it in every task.
    #[arg(long, env = crate::identity::ECS_METADATA_VARIABLE, hide = true)]
    pub ecs_metadata_uri: Option<String>,

    /// Most client connections open at once. At it, a new connection closes the oldest one
    /// that is idle or has sent nothing; when every one is in the middle of a request, the
    /// server stops accepting until one finishes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Time from a request's first byte to its last header byte, and from accepting a
    /// connection to its first byte (or `IDLE_TIMEOUT`, if shorter); a slower client is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a keep-alive connection may wait for its next request; above the load
    /// balancer's own idle timeout (60 s on an ALB), so the balancer closes first.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Threads serving requests; 1 runs everything on one thread, with no work stealing. By
    /// default the CPUs the process may use (on Fargate, the task's vCPUs rounded up).
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Time in-flight requests get to finish after SIGTERM (after the drain, for `name`);
    /// then the remaining connections are closed and the process exits 0.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl Listen {
    /// This instance's name; see [`crate::identity::identify`].
    pub async fn instance_id(&self) -> String {
        self.identity().await.instance
    }

    /// This instance's name and availability zone; see [`crate::identity::identify`].
    pub async fn identity(&self) -> crate::identity::Identity {
        crate::identity::identify(
            self.instance_id.as_deref(),
            self.ecs_metadata_uri.as_deref(),
        )
        .await
    }

    /// Threads to serve with: the setting, or the CPUs available.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The server's bounds.
    pub fn limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The address a local client (the `healthcheck` subcommand) reaches this server on:
    /// loopback when the server listens on every address.
    pub fn local_addr(&self) -> SocketAddr {
        let ip = match self.host {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.port)
    }
}

/// A service's settings: clap arguments with a [`Listen`] among them, checked as a whole once
/// they are parsed.
pub trait ServiceConfig: clap::Args {
    /// Where the service listens.
    fn listen(&self) -> &Listen;

    /// Checks what single fields cannot (bounds that must be ordered, and the like); the
    /// message names the variables. Runs once, at parse time.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Subcommands every service binary has.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Command {
    /// GET /healthz on the local server and exit 0 when it answers 200, 1 otherwise; for
    /// container health checks in images with no shell or curl.
    Healthcheck,
}

/// A service's command line: its settings `C`, or a subcommand.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct Cli<C: clap::Args> {
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The service's settings.
    #[command(flatten)]
    pub config: C,
}

/// Parses the command line and environment of the binary `name`, and checks the settings as a
/// whole. Help and version print and exit 0; a bad value exits 2 with one line that names the
/// variable and its flag.
pub fn parse_args<C: ServiceConfig>(name: &'static str, about: &'static str) -> Cli<C> {
    let command = Cli::<C>::command().name(name).bin_name(name).about(about);
    let cli = command
        .clone()
        .try_get_matches()
        .and_then(|matches| Cli::<C>::from_arg_matches(&matches))
        .unwrap_or_else(|err| {
            if let Some(line) = one_line(&command, &err) {
                eprintln!("{line}");
                std::process::exit(2);
            }
            err.format(&mut command.clone()).exit()
        });
    if let Err(reason) = cli.config.validate() {
        eprintln!("error: {reason}");
        std::process::exit(2);
    }
    cli
}

/// The one line for a bad value: `error: invalid value "x" for PORT (--port): <reason>`.
fn one_line(command: &clap::Command, err: &clap::Error) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.as_str(),
        _ => "",
    };
    // clap names the argument `--port <PORT>`; its variable is in the command's definition.
    let flag = arg.split_whitespace().next().unwrap_or(arg);
    let variable = command
        .get_arguments()
        .find(|candidate| candidate.get_long() == flag.strip_prefix("--"))
        .and_then(|candidate| candidate.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .unwrap_or_else(|| flag.to_owned());
    let reason = match (err.source(), err.get(ContextKind::ValidValue)) {
        (Some(source), _) => format!(": {source}"),
        (None, Some(ContextValue::Strings(valid))) => {
            format!(": expected one of {}", valid.join(", "))
        }
        _ => String::new(),
    };
    Some(format!(
        "error: invalid value {value:?} for {variable} ({flag}){reason}"
    ))
}

/// The longest duration any setting takes; longer ones are typing mistakes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration setting written `500ms`, `2s` or `1m`, at most a day.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|err| format!("{err} (write it as 500ms, 2s or 1m)"))?;
    if duration > MAX_DURATION {
        return Err("at most 1 day".into());
    }
    Ok(duration)
}

/// What a service reports beyond its own log lines: the access log, and CloudWatch metrics
/// written as EMF lines on stdout. Each service flattens it into its settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Telemetry {
    /// Which requests get an access-log line: `all`, `errors` (answered 5xx) or `off`.
    #[arg(long, env = "ACCESS_LOG", value_enum, default_value_t = AccessLog::All)]
    pub access_log: AccessLog,

    /// Time between CloudWatch EMF metric lines on stdout, at least 1s; `0` turns them off.
    /// By default 60s on ECS (where `ECS_CONTAINER_METADATA_URI_V4` is set), off elsewhere.
    #[arg(long, env = "METRICS_EMF_INTERVAL", value_parser = parse_emf_interval)]
    pub metrics_emf_interval: Option<Duration>,

    /// The CloudWatch namespace of the EMF metrics.
    #[arg(long, env = "METRICS_EMF_NAMESPACE", default_value = crate::emf::DEFAULT_NAMESPACE, value_parser = parse_namespace)]
    pub metrics_emf_namespace: String,
}

impl Telemetry {
    /// The time between EMF lines, or `None` when they are off.
    pub fn emf_interval(&self, listen: &Listen) -> Option<Duration> {
        match self.metrics_emf_interval {
            Some(interval) if interval.is_zero() => None,
            Some(interval) => Some(interval),
            None => listen
                .ecs_metadata_uri
                .as_ref()
                .map(|_| Duration::from_secs(60)),
        }
    }
}

fn parse_emf_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    if !interval.is_zero() && interval < Duration::from_secs(1) {
        return Err("at least 1s, or 0 for off".into());
    }
    Ok(interval)
}

/// A CloudWatch namespace: 1 to 255 ASCII characters without control characters, not starting
/// with `:` (the API's pattern `[^:].*`) nor `AWS/` (reserved for AWS's own); see
/// <https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_Metric.html> and
/// <https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html>.
fn parse_namespace(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 255 {
        return Err("1 to 255 characters".into());
    }
    if !value
        .bytes()
        .all(|byte| byte.is_ascii() && !byte.is_ascii_control())
    {
        return Err("ASCII characters only, no control characters".into());
    }
    if value.starts_with(':') || value.starts_with("AWS/") {
        return Err("must not start with ':' or 'AWS/'".into());
    }
    if value.trim().is_empty() {
        return Err("must have a character other than spaces".into());
    }
    Ok(value.to_owned())
}
