//! One request through the front door, from the command line, as curl would send it to one
//! host: the URL's scheme, host and port make the target (its name discovered by DNS or Cloud
//! Map's API, balanced, retried where safe), its path and query go on the request. Settings
//! come from the same variables as hello's (`DISCOVERY`, `DNS_SERVER`, `DISCOVERY_RECORD`,
//! `DNS_MIN_TTL`, `CONNECT_TIMEOUT`, `ATTEMPT_TIMEOUT`, `REQUEST_TIMEOUT`, `MAX_ATTEMPTS`,
//! `CLOUDMAP_*`, ...; see [`set`]).
//!
//! ```text
//! cargo run -p upstream --example call -- http://name.internal:3000/
//! cargo run -p upstream --example call -- -H 'accept: application/json' http://10.0.1.7:3000/
//! cargo run -p upstream --example call -- --json '{"sku":"a-1"}' http://orders.internal:8080/orders
//! cargo run -p upstream --example call -- -X PUT -d 'x' --idempotent http://store.internal/items/7
//! ```
//!
//! The body goes to stdout and nothing else does; one line to stderr says the status, the
//! endpoint and the attempts. Exit 0 for a 2xx or 3xx answer, 1 for any other answer or a
//! failure (its causes on stderr), 2 for a bad argument or setting (with the usage).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use prometheus_client::registry::Registry;
use upstream::http::Method;
use upstream::{Options, ProbeKind, Request, Target, Upstream};

/// The usage line.
pub const USAGE: &str =
    "usage: call [-X METHOD] [-H 'Name: value']... [-d BODY | --json BODY] [--idempotent] URL";

/// What the command line asks for.
#[derive(Debug)]
pub struct Args {
    method: Option<Method>,
    headers: Vec<(String, String)>,
    body: Option<String>,
    json: bool,
    idempotent: bool,
    url: String,
}

/// Sets the option that the variable `name` (hello's name for it) sets, from its value `v`;
/// `Ok(false)` when `name` sets none.
pub fn set(o: &mut Options, name: &str, v: &str) -> Result<bool, String> {
    match name {
        "DISCOVERY" => o.source = v.parse()?,
        "DISCOVERY_RECORD" => o.record = v.parse()?,
        "DNS_SERVER" => o.dns_server = Some(dns_server(v)?),
        "DNS_MIN_TTL" => o.ttl.min = duration(v)?,
        "DNS_MAX_TTL" => o.ttl.max = duration(v)?,
        "DNS_MEMBERSHIP_TTL" => o.membership_ttl = duration(v)?,
        "DNS_TIMEOUT" => o.dns_timeout = duration(v)?,
        "CLOUDMAP_NAMESPACE" => o.cloudmap.namespace = Some(v.into()),
        "CLOUDMAP_SERVICE" => o.cloudmap.service = Some(v.into()),
        "CLOUDMAP_OWNER_ACCOUNT" => o.cloudmap.owner_account = Some(v.into()),
        "CLOUDMAP_QUERY" => o.cloudmap.query = query(v)?,
        "CLOUDMAP_POLL_INTERVAL" => o.cloudmap.poll_interval = duration(v)?,
        "CLOUDMAP_FULL_INTERVAL" => o.cloudmap.full_interval = duration(v)?,
        "CLOUDMAP_TIMEOUT" => o.cloudmap.timeout = duration(v)?,
        "ZONE_AWARE" => o.zone.enabled = number(v)?,
        "ZONE_AWARE_MIN_SIZE" => o.zone.min_size = number(v)?,
        "ZONE" => o.zone.local = Some(v.into()),
        "MAX_ATTEMPTS" => o.retry.max_attempts = number(v)?,
        "CONNECT_TIMEOUT" => o.connect_timeout = duration(v)?,
        "ATTEMPT_TIMEOUT" => o.retry.attempt_timeout = duration(v)?,
        "REQUEST_TIMEOUT" => o.retry.request_timeout = duration(v)?,
        "RETRY_BUDGET_PERCENT" => o.retry.budget_percent = number(v)?,
        "RETRY_BUDGET_MIN_PER_SECOND" => o.retry.budget_min_per_second = number(v)?,
        "EJECT_AFTER_FAILURES" => o.ejection.after_failures = number(v)?,
        "EJECT_BASE_TIME" => o.ejection.base_time = duration(v)?,
        "EJECT_MAX_TIME" => o.ejection.max_time = duration(v)?,
        "EJECT_MAX_PERCENT" => o.ejection.max_percent = number(v)?,
        "PROBE_INTERVAL" => o.probe.interval = duration(v)?,
        "PROBE_TIMEOUT" => o.probe.timeout = duration(v)?,
        "PROBE_PATH" => o.probe.kind = ProbeKind::Http1 { path: v.into() },
        "HEDGE" => o.hedge.enabled = number(v)?,
        "HEDGE_MIN_DELAY" => o.hedge.min_delay = duration(v)?,
        "HEDGE_MAX_DELAY" => o.hedge.max_delay = duration(v)?,
        "MAX_ANSWER_BYTES" => o.max_answer_bytes = number(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A number (or `true` / `false`).
fn number<T: std::str::FromStr<Err: std::fmt::Display>>(value: &str) -> Result<T, String> {
    value.parse().map_err(|err: T::Err| err.to_string())
}

fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|err| err.to_string())
}

fn dns_server(value: &str) -> Result<std::net::SocketAddr, String> {
    value
        .parse()
        .or_else(|_| value.parse().map(|ip| std::net::SocketAddr::new(ip, 53)))
        .map_err(|_| "expected ip or ip:port".into())
}

fn query(value: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.trim().to_owned(), value.trim().to_owned())),
            None => Err(format!("expected KEY=VALUE, got {pair:?}")),
        })
        .collect()
}

/// The options the variables in `vars` set; others are ignored. The error names the variable.
pub fn options(vars: impl IntoIterator<Item = (String, String)>) -> Result<Options, String> {
    let mut options = Options::default();
    for (name, value) in vars {
        set(&mut options, &name, &value).map_err(|why| format!("{name}: {why}"))?;
    }
    options.validate(|field| field)?;
    Ok(options)
}

/// Reads the command line (without the program's name).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let (mut method, mut headers, mut body, mut json, mut idempotent, mut url) =
        (None, Vec::new(), None, false, false, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "-X" => method = Some(value()?.parse().map_err(|_| "-X: not a method")?),
            "-H" => {
                let header = value()?;
                let (name, value) = header.split_once(':').ok_or("-H: expected 'Name: value'")?;
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "-d" | "--json" => (body, json) = (Some(value()?), arg == "--json"),
            "--idempotent" => idempotent = true,
            _ if arg.starts_with('-') || url.is_some() => return Err(format!("unexpected {arg}")),
            _ => url = Some(arg),
        }
    }
    let url = url.ok_or("no URL")?;
    Ok(Args {
        method,
        headers,
        body,
        json,
        idempotent,
        url,
    })
}

/// The target (scheme, host and port of the URL) and the request (its path and query, and
/// the rest of the command line).
pub fn request(args: &Args) -> Result<(Target, Request), String> {
    let url = url::Url::parse(&args.url).map_err(|err| format!("{}: {err}", args.url))?;
    let port = url
        .port()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    let host = url.host_str().ok_or("the URL has no host")?;
    let target: Target = format!("{}://{host}{port}", url.scheme()).parse()?;
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let method = args.method.clone().unwrap_or(match args.body {
        Some(_) => Method::POST,
        None => Method::GET,
    });
    let mut request = Request::new(method, path).map_err(|err| err.to_string())?;
    if args.json {
        request = request
            .with_header("content-type", "application/json")
            .and_then(|request| request.with_header("accept", "application/json"))
            .map_err(|err| err.to_string())?;
    }
    for (name, value) in &args.headers {
        request = request
            .with_header(name.as_str(), value.as_str())
            .map_err(|err| err.to_string())?;
    }
    if let Some(body) = &args.body {
        request = request.with_body(body.clone());
    }
    if args.idempotent {
        request = request.mark_idempotent();
    }
    Ok((target, request))
}

/// The whole command: `args` without the program's name, `vars` the environment. Writes the
/// body to `out`, the rest to `err`; returns the exit code.
pub async fn run(
    args: impl IntoIterator<Item = String>,
    vars: impl IntoIterator<Item = (String, String)>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let prepared = parse_args(args).and_then(|args| Ok((request(&args)?, options(vars)?)));
    let ((target, request), options) = match prepared {
        Ok(prepared) => prepared,
        Err(why) => {
            let _ = writeln!(err, "call: {why}\n{USAGE}");
            return 2;
        }
    };
    let mut registry = Registry::default();
    let upstream = match Upstream::start(target, options, &mut registry) {
        Ok(upstream) => upstream,
        Err(why) => {
            let _ = writeln!(err, "call: {why:#}");
            return 1;
        }
    };
    // The first call waits for discovery's first answer, within the request timeout.
    let code = match upstream.send(&request).await {
        Ok(reply) => {
            let status = reply.answer.status();
            let _ = out.write_all(reply.answer.body());
            let _ = out.flush();
            let _ = writeln!(
                err,
                "{status} from {} after {} attempt(s)",
                reply.endpoint, reply.attempts
            );
            if status.is_success() || status.is_redirection() {
                0
            } else {
                1
            }
        }
        Err(why) => {
            let _ = writeln!(err, "call failed: {}", why.chain());
            1
        }
    };
    let _ = upstream.shutdown().await;
    code
}

#[tokio::main]
async fn main() -> ExitCode {
    let code = run(
        std::env::args().skip(1),
        std::env::vars(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
    .await;
    ExitCode::from(code)
}
