//! Metrics for CloudWatch with no agent and no API call: a line of CloudWatch Embedded Metric
//! Format (EMF) on stdout every interval, which CloudWatch Logs turns into metrics in any log
//! group (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).
//! It owns the request counts and the latency histogram ([`RequestStats`]), the line's format,
//! reading values back from a Prometheus registry's text ([`Counters`]), and the task that
//! writes the lines ([`Emitter`]). Which metrics a service adds is the service's business
//! ([`Source`]).
//!
//! One line per interval, one directive, one dimension set `[["Service"]]`; the zone is a plain
//! property (`Zone`), readable by Logs Insights without multiplying custom metrics. Counts are
//! deltas over the interval, written even when zero so that alarms see data. Latency is a
//! distribution, `{"Values":[..],"Counts":[..]}`, of [`BUCKETS`] log-linear buckets: 4 per
//! doubling from 8 µs to 134 s, so a value is reported within 12.5 % of the truth; the spec
//! allows 100 values per array.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The namespace unless `METRICS_EMF_NAMESPACE` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "HelloName";

/// Most metric definitions in one directive (the EMF spec's limit).
const MAX_METRICS_PER_DIRECTIVE: usize = 100;

// === request counts and latency ===

/// Buckets of the latency histogram: below 8 µs, then 24 doublings of 4 buckets each.
pub const BUCKETS: usize = 1 + (OCTAVES << SUB_BITS) as usize;
/// log2 of the buckets per doubling.
const SUB_BITS: u32 = 2;
/// log2 of the first bucket's upper bound, in microseconds (8 µs).
const FLOOR_BITS: u32 = 3;
/// Doublings covered above the floor: up to 8 µs × 2^24 = 134 s.
const OCTAVES: u32 = 24;

// An EMF array holds at most 100 values.
const _: () = assert!(BUCKETS <= 100);

/// The bucket of a latency of `micros` microseconds.
fn bucket(micros: u64) -> usize {
    if micros < 1 << FLOOR_BITS {
        return 0;
    }
    let octave = 63 - micros.leading_zeros() - FLOOR_BITS;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = (micros >> (octave + FLOOR_BITS - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    1 + ((octave << SUB_BITS) as usize) + sub as usize
}

/// The bounds of bucket `index`, in microseconds, lower inclusive.
fn bucket_bounds(index: usize) -> (u64, u64) {
    if index == 0 {
        return (0, 1 << FLOOR_BITS);
    }
    let octave = ((index - 1) >> SUB_BITS) as u32;
    let sub = ((index - 1) & ((1 << SUB_BITS) - 1)) as u64;
    let base = 1u64 << (octave + FLOOR_BITS);
    let width = base >> SUB_BITS;
    (base + sub * width, base + (sub + 1) * width)
}

/// The value reported for bucket `index`: its middle, in milliseconds.
fn bucket_value_ms(index: usize) -> f64 {
    let (low, high) = bucket_bounds(index);
    (low + high) as f64 / 2.0 / 1000.0
}

/// Requests and their latency since the last [`RequestStats::take`]: a few atomic adds per
/// request, shared by every worker thread.
#[derive(Debug)]
pub struct RequestStats {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One interval of [`RequestStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInterval {
    /// Requests answered.
    pub requests: u64,
    /// Of them, answered 4xx.
    pub client_errors: u64,
    /// Of them, answered 5xx.
    pub server_errors: u64,
    /// Latency as (milliseconds, count), one pair per bucket that has any, fastest first.
    pub latency: Vec<(f64, u64)>,
}

impl RequestStats {
    /// Counts a request answered with `status` after `elapsed`.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_client_error() {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call, which start again from zero.
    pub fn take(&self) -> RequestInterval {
        let latency = self
            .latency
            .iter()
            .enumerate()
            .filter_map(|(index, count)| match count.swap(0, Ordering::Relaxed) {
                0 => None,
                count => Some((bucket_value_ms(index), count)),
            })
            .collect();
        RequestInterval {
            requests: self.requests.swap(0, Ordering::Relaxed),
            client_errors: self.client_errors.swap(0, Ordering::Relaxed),
            server_errors: self.server_errors.swap(0, Ordering::Relaxed),
            latency,
        }
    }
}

// === the line ===

/// A CloudWatch unit, as EMF writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `Count`.
    Count,
    /// `Milliseconds`.
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// A metric's value for one interval.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// One number.
    Number(u64),
    /// Values with how many times each occurred; at most 100 pairs.
    Distribution(Vec<(f64, u64)>),
}

/// One metric of a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// The metric's name.
    pub name: &'static str,
    /// Its unit.
    pub unit: Unit,
    /// Its value.
    pub value: Value,
}

impl Datum {
    /// A count.
    pub fn count(name: &'static str, value: u64) -> Self {
        Self {
            name,
            unit: Unit::Count,
            value: Value::Number(value),
        }
    }
}

/// Who writes the lines: the namespace, and the `Service` and `Zone` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The CloudWatch namespace.
    pub namespace: String,
    /// The `Service` dimension's value.
    pub service: &'static str,
    /// The availability zone, when known.
    pub zone: Option<String>,
}

/// Appends `value` as a JSON string.
fn push_str(out: &mut String, value: &str) {
    // A string always serializes; once a line per interval, the allocation does not matter.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// Appends a finite number; CloudWatch takes no NaN or infinity.
fn push_number(out: &mut String, value: f64) {
    let value = if value.is_finite() { value } else { 0.0 };
    let _ = write!(out, "{value}");
}

/// One EMF line, `\n` included: the metadata, then `Service`, `Zone` and the metrics.
pub fn line(identity: &Identity, timestamp_ms: u64, data: &[Datum]) -> String {
    let mut out = String::with_capacity(256 + 64 * data.len());
    let _ = write!(
        out,
        "{{\"_aws\":{{\"Timestamp\":{timestamp_ms},\"CloudWatchMetrics\":["
    );
    for (i, directive) in data.chunks(MAX_METRICS_PER_DIRECTIVE).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"Namespace\":");
        push_str(&mut out, &identity.namespace);
        out.push_str(",\"Dimensions\":[[\"Service\"]],\"Metrics\":[");
        for (j, datum) in directive.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"Name\":");
            push_str(&mut out, datum.name);
            let _ = write!(out, ",\"Unit\":\"{}\"}}", datum.unit.as_str());
        }
        out.push_str("]}");
    }
    out.push_str("]},\"Service\":");
    push_str(&mut out, identity.service);
    if let Some(zone) = &identity.zone {
        out.push_str(",\"Zone\":");
        push_str(&mut out, zone);
    }
    for datum in data {
        out.push(',');
        push_str(&mut out, datum.name);
        out.push(':');
        match &datum.value {
            Value::Number(value) => {
                let _ = write!(out, "{value}");
            }
            Value::Distribution(pairs) => {
                out.push_str("{\"Values\":[");
                for (i, (value, _)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_number(&mut out, *value);
                }
                out.push_str("],\"Counts\":[");
                for (i, (_, count)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{count}");
                }
                out.push_str("]}");
            }
        }
    }
    out.push_str("}\n");
    out
}

/// The request metrics every service writes: `Requests`, `Requests4xx`, `Requests5xx`, and
/// `Latency` when there was a request.
pub fn request_data(interval: RequestInterval, out: &mut Vec<Datum>) {
    out.push(Datum::count("Requests", interval.requests));
    out.push(Datum::count("Requests4xx", interval.client_errors));
    out.push(Datum::count("Requests5xx", interval.server_errors));
    // With no request there is no value; the spec wants every metric named in the directive
    // present in the line, so the metric is left out.
    if !interval.latency.is_empty() {
        out.push(Datum {
            name: "Latency",
            unit: Unit::Milliseconds,
            value: Value::Distribution(interval.latency),
        });
    }
}

// === values from a Prometheus registry ===

/// One sample of the OpenMetrics text format: `name{labels} value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The sample's name (`hello_upstream_retries_total`).
    pub name: &'a str,
    /// The text between the braces, empty without labels.
    pub labels: &'a str,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`, as written (escapes are kept).
    pub fn label(&self, key: &str) -> Option<&str> {
        let mut rest = self.labels;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"")?;
            let end = closing_quote(after)?;
            if name.trim_start_matches(',').trim() == key {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
        None
    }
}

/// The index of the first `"` in `text` not escaped by a backslash.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, byte) in text.bytes().enumerate() {
        match byte {
            b'\\' if !escaped => escaped = true,
            b'"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// The samples of an OpenMetrics text, as `prometheus_client::encoding::text::encode` writes
/// it; comments and lines that do not parse are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let inside = &line[name_end + 1..];
            let mut at = 0;
            loop {
                match inside[at..].find(['"', '}'])? {
                    quote if inside[at + quote..].starts_with('"') => {
                        at += quote + 1 + closing_quote(&inside[at + quote + 1..])? + 1;
                    }
                    brace => break (&inside[..at + brace], &inside[at + brace + 1..]),
                }
            }
        } else {
            ("", &line[name_end..])
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Sample {
            name,
            labels,
            value,
        })
    })
}

/// Where an EMF count comes from: a counter's sample, with one label's value when the counter
/// has labels.
#[derive(Debug, Clone, Copy)]
pub struct FromCounter {
    /// The EMF metric's name.
    pub metric: &'static str,
    /// The sample's name in the registry's text.
    pub sample: &'static str,
    /// The label that picks the sample, when there are several.
    pub label: Option<(&'static str, &'static str)>,
}

/// EMF counts read from counters in a registry's text each interval, as deltas: a table
/// decides which sample is which metric, so nothing reaches into the code that registered them.
#[derive(Debug)]
pub struct Counters {
    table: &'static [FromCounter],
    previous: Vec<u64>,
    missing_reported: bool,
}

impl Counters {
    /// Counts per `table`, from zero: the counters start with the process.
    pub fn new(table: &'static [FromCounter]) -> Self {
        Self {
            table,
            previous: vec![0; table.len()],
            missing_reported: false,
        }
    }

    /// Appends each table entry's increase since the last call, read from `text`. An entry
    /// whose sample is not in the text is left out and logged once.
    pub fn collect(&mut self, text: &str, out: &mut Vec<Datum>) {
        let mut found = vec![None; self.table.len()];
        for sample in samples(text) {
            for (i, entry) in self.table.iter().enumerate() {
                if sample.name == entry.sample
                    && entry
                        .label
                        .is_none_or(|(key, value)| sample.label(key) == Some(value))
                {
                    found[i] = Some(sample.value as u64);
                }
            }
        }
        for (i, (entry, now)) in self.table.iter().zip(found).enumerate() {
            match now {
                Some(now) => {
                    // A counter never goes down within a process; if one did, count from zero.
                    let delta = now.checked_sub(self.previous[i]).unwrap_or(now);
                    self.previous[i] = now;
                    out.push(Datum::count(entry.metric, delta));
                }
                None if !self.missing_reported => {
                    tracing::warn!(
                        metric = entry.metric,
                        sample = entry.sample,
                        "EMF metric left out: its counter is not in the registry"
                    );
                }
                None => {}
            }
        }
        self.missing_reported = true;
    }
}

// === the emitter ===

/// Metrics a service adds to each line.
pub trait Source: Send + 'static {
    /// Appends this interval's values.
    fn collect(&mut self, out: &mut Vec<Datum>);
}

/// Where lines go: stdout in the services, a buffer in tests.
pub type Output = Box<dyn FnMut(&str) + Send>;

/// Writes `line` to stdout at once, whole, under stdout's lock: tracing's lines take the same
/// lock, so an EMF line is never mixed into one of them.
pub fn stdout() -> Output {
    Box::new(|line: &str| {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    })
}

/// The task writing a line every interval; [`Emitter::finish`] writes the last partial
/// interval and stops it (dropping it does the same, on its own time).
#[derive(Debug)]
pub struct Emitter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Report {
    identity: Identity,
    requests: Arc<RequestStats>,
    sources: Vec<Box<dyn Source>>,
    output: Output,
}

impl Report {
    fn write(&mut self) {
        let mut data = Vec::new();
        request_data(self.requests.take(), &mut data);
        for source in &mut self.sources {
            source.collect(&mut data);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        (self.output)(&line(&self.identity, now, &data));
    }
}

impl Emitter {
    /// Writes a line to `output` every `interval`, with `requests` and what `sources` add.
    /// Must be called inside a Tokio runtime.
    pub fn start(
        identity: Identity,
        interval: Duration,
        requests: Arc<RequestStats>,
        sources: Vec<Box<dyn Source>>,
        output: Output,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let mut report = Report {
            identity,
            requests,
            sources,
            output,
        };
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => report.write(),
                    _ = &mut stopped => {
                        report.write();
                        return;
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// Writes the interval so far and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    #[test]
    fn buckets_are_ordered_contiguous_and_within_an_eighth() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(7), 0);
        assert_eq!(bucket(8), 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for index in 1..BUCKETS {
            let (low, high) = bucket_bounds(index);
            assert_eq!(bucket_bounds(index - 1).1, low, "bucket {index}");
            assert_eq!(bucket(low), index);
            assert_eq!(bucket(high - 1), index);
            let middle = bucket_value_ms(index) * 1000.0;
            assert!(
                middle - low as f64 <= low as f64 / 8.0 + 1e-6,
                "bucket {index}"
            );
        }
        assert_eq!(bucket_bounds(BUCKETS - 1).1, 8 << OCTAVES);
        assert_eq!(
            bucket(Duration::from_secs(200).as_micros() as u64),
            BUCKETS - 1
        );
    }

    #[test]
    fn request_stats_count_by_class_and_bucket_and_start_again() {
        let stats = RequestStats::default();
        stats.record(StatusCode::OK, Duration::from_micros(100));
        stats.record(StatusCode::OK, Duration::from_micros(101));
        stats.record(StatusCode::NOT_FOUND, Duration::from_millis(3));
        stats.record(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(3));

        let interval = stats.take();

        assert_eq!(interval.requests, 4);
        assert_eq!(interval.client_errors, 1);
        assert_eq!(interval.server_errors, 1);
        assert_eq!(interval.latency.len(), 3);
        assert_eq!(interval.latency[0].1, 2);
        assert!((interval.latency[0].0 - 0.1).abs() < 0.0125);
        assert!((interval.latency[2].0 - 3000.0).abs() < 3000.0 / 8.0);
        assert_eq!(stats.take(), RequestInterval::default());
    }

    fn identity(zone: Option<&str>) -> Identity {
        Identity {
            namespace: "HelloName/test".into(),
            service: "name",
            zone: zone.map(str::to_owned),
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_metadata_dimension_and_values() {
        let mut data = Vec::new();
        request_data(
            RequestInterval {
                requests: 3,
                client_errors: 1,
                server_errors: 0,
                latency: vec![(0.1, 2), (1.5, 1)],
            },
            &mut data,
        );

        let text = line(&identity(Some("eu-west-1a")), 1_700_000_000_123, &data);

        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["_aws"]["Timestamp"], 1_700_000_000_123u64);
        let directive = &json["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "HelloName/test");
        assert_eq!(directive["Dimensions"], serde_json::json!([["Service"]]));
        assert_eq!(directive["Metrics"][3]["Name"], "Latency");
        assert_eq!(directive["Metrics"][3]["Unit"], "Milliseconds");
        assert_eq!(json["Service"], "name");
        assert_eq!(json["Zone"], "eu-west-1a");
        assert_eq!(json["Requests"], 3);
        assert_eq!(json["Requests4xx"], 1);
        assert_eq!(json["Requests5xx"], 0);
        assert_eq!(json["Latency"]["Values"], serde_json::json!([0.1, 1.5]));
        assert_eq!(json["Latency"]["Counts"], serde_json::json!([2, 1]));
    }

    #[test]
    fn an_idle_interval_has_counts_and_no_latency() {
        let mut data = Vec::new();
        request_data(RequestInterval::default(), &mut data);
        let json: serde_json::Value =
            serde_json::from_str(&line(&identity(None), 1, &data)).unwrap();
        assert_eq!(json["Requests"], 0);
        assert!(json.get("Latency").is_none());
        assert!(json.get("Zone").is_none());
        assert_eq!(
            json["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn more_than_a_hundred_metrics_take_several_directives() {
        let names: Vec<&'static str> = (0..150)
            .map(|i| &*Box::leak(format!("M{i}").into_boxed_str()))
            .collect();
        let data: Vec<Datum> = names.iter().map(|name| Datum::count(name, 1)).collect();
        let json: serde_json::Value =
            serde_json::from_str(&line(&identity(None), 1, &data)).unwrap();
        let directives = json["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 2);
        assert_eq!(directives[0]["Metrics"].as_array().unwrap().len(), 100);
        assert_eq!(json["M149"], 1);
    }

    const TEXT: &str = "# HELP hello_upstream_attempts Attempts to call name, by outcome.\n\
        # TYPE hello_upstream_attempts counter\n\
        hello_upstream_attempts_total{outcome=\"ok\"} 7\n\
        hello_upstream_attempts_total{outcome=\"timeout\"} 2\n\
        hello_upstream_retries_total 3\n\
        hello_upstream_zone_picks_total{zone=\"a \\\"quoted\\\" } zone\",kind=\"x\"} 5\n\
        # EOF\n";

    #[test]
    fn samples_parse_names_labels_and_values() {
        let all: Vec<Sample<'_>> = samples(TEXT).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].name, "hello_upstream_attempts_total");
        assert_eq!(all[0].label("outcome"), Some("ok"));
        assert_eq!(all[1].value, 2.0);
        assert_eq!(all[2].labels, "");
        assert_eq!(all[2].value, 3.0);
        assert_eq!(all[3].label("kind"), Some("x"));
        assert_eq!(all[3].label("zone"), Some("a \\\"quoted\\\" } zone"));
        assert_eq!(all[3].value, 5.0);
    }

    static TABLE: [FromCounter; 3] = [
        FromCounter {
            metric: "AttemptsOk",
            sample: "hello_upstream_attempts_total",
            label: Some(("outcome", "ok")),
        },
        FromCounter {
            metric: "Retries",
            sample: "hello_upstream_retries_total",
            label: None,
        },
        FromCounter {
            metric: "Gone",
            sample: "hello_renamed_total",
            label: None,
        },
    ];

    #[test]
    fn counters_give_deltas_and_leave_out_what_is_missing() {
        let mut counters = Counters::new(&TABLE);
        let mut first = Vec::new();
        counters.collect(TEXT, &mut first);
        let mut second = Vec::new();
        counters.collect(&TEXT.replace("} 7", "} 10"), &mut second);

        assert_eq!(
            first,
            vec![Datum::count("AttemptsOk", 7), Datum::count("Retries", 3)]
        );
        assert_eq!(
            second,
            vec![Datum::count("AttemptsOk", 3), Datum::count("Retries", 0)]
        );
    }

    struct Constant;

    impl Source for Constant {
        fn collect(&mut self, out: &mut Vec<Datum>) {
            out.push(Datum::count("Extra", 42));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_emitter_writes_each_interval_and_the_rest_at_the_end() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let stats = Arc::new(RequestStats::default());
        let emitter = Emitter::start(
            identity(None),
            Duration::from_secs(60),
            Arc::clone(&stats),
            vec![Box::new(Constant)],
            Box::new(move |line: &str| sink.lock().unwrap().push(line.to_owned())),
        );

        stats.record(StatusCode::OK, Duration::from_millis(1));
        tokio::time::sleep(Duration::from_secs(61)).await;
        stats.record(StatusCode::OK, Duration::from_millis(1));
        stats.record(StatusCode::OK, Duration::from_millis(1));
        emitter.finish().await;

        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let requests: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .collect();
        assert_eq!(requests[0]["Requests"], 1);
        assert_eq!(requests[1]["Requests"], 2);
        assert_eq!(requests[1]["Extra"], 42);
    }
}
