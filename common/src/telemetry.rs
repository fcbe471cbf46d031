//! The `tracing` subscriber, and what a service reports besides its own log lines.
//!
//! Log lines are JSON when stdout is not a terminal (CloudWatch Logs, `docker logs`), one
//! object per line with the event's fields flattened, so that Logs Insights sees them as
//! top-level fields:
//! `{"timestamp":..,"level":..,"message":..,<fields>,<span fields>,"trace_id":..,"target":..}`.
//! A line written while a request is served carries the request's `trace_id`
//! ([`crate::request_log`]). On a terminal the lines are tracing's readable format, the trace id
//! at the end. `RUST_LOG` overrides the default filter.
//!
//! [`Reporting`] holds the access log's mode and, when EMF lines are on, their settings and
//! the request counts, and starts the [`crate::emf::Emitter`].

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Listen, Telemetry};
use crate::emf::{Emitter, Identity, RequestStats, Source};
use crate::request_log::{AccessLog, RequestLog};

/// Installs the global subscriber on stdout. `default_filter` applies when `RUST_LOG` is unset
/// or invalid, for example `"name=info,tower_http=info"`.
pub fn init(default_filter: &str) {
    init_with(
        default_filter,
        std::io::stdout,
        !std::io::stdout().is_terminal(),
    );
}

/// Installs the global subscriber on `writer`, as JSON lines when `json`; tests use it to show
/// logs on demand. Does nothing when a global subscriber is already installed.
pub fn init_with<W>(default_filter: &str, writer: W, json: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt as _;
    // A second install (another test in the same process) is refused, and that is fine.
    let _ = subscriber(default_filter, writer, json).try_init();
}

/// The subscriber [`init_with`] installs, for a test to set as its thread's default.
pub fn subscriber<W>(
    default_filter: &str,
    writer: W,
    json: bool,
) -> Box<dyn Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        Box::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine)
                .finish(),
        )
    } else {
        Box::new(builder.event_format(TextLine(Format::default())).finish())
    }
}

// === JSON lines ===

/// The JSON line format: tracing-subscriber's own JSON format nests span fields under `span`
/// and has no place for a task's trace id, so the services write their own. It is on the
/// request path of every access line: numbers go through `itoa`, the time is written digit by
/// digit, and strings with nothing to escape are copied whole.
struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        // The line is built in a String of this thread's, then written at once: the writer
        // is a `dyn Write`, a call per piece. A field whose Debug logs finds it taken and
        // builds its line in a new one.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                json_line(ctx, event, &mut line)?;
                writer.write_str(&line)
            }
            Err(_) => {
                let mut line = String::new();
                json_line(ctx, event, &mut line)?;
                writer.write_str(&line)
            }
        })
    }
}

/// Writes `event`'s JSON line into `out`.
fn json_line<S>(
    ctx: &FmtContext<'_, S, JsonFields>,
    event: &Event<'_>,
    out: &mut String,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    out.push_str("{\"timestamp\":\"");
    out.push_str(rfc3339(std::time::SystemTime::now()).as_str());
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push('"');
    let mut fields = JsonVisitor {
        out: &mut *out,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            let extensions = span.extensions();
            let Some(stored) = extensions.get::<FormattedFields<JsonFields>>() else {
                continue;
            };
            // JsonFields stores `{"key":value,...}`: its members join the line's.
            let members = stored
                .fields
                .trim()
                .trim_start_matches('{')
                .trim_end_matches('}');
            if !members.is_empty() {
                out.push(',');
                out.push_str(members);
            }
        }
    }
    if let Some(trace_id) = crate::request_log::current_trace_id() {
        out.push_str(",\"trace_id\":\"");
        out.push_str(trace_id.hex().as_str());
        out.push('"');
    }
    out.push_str(",\"target\":");
    push_json_str(out, meta.target());
    out.push_str("}\n");
    Ok(())
}

/// Writes an event's fields as `,"key":value` members.
struct JsonVisitor<'a> {
    out: &'a mut String,
    result: fmt::Result,
}

impl JsonVisitor<'_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            self.out.push(',');
            push_json_str(self.out, field.name());
            self.out.push(':');
            self.result = value(self.out);
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| {
            push_json_str(out, value);
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.push('"');
            write!(JsonEscaped(&mut *out), "{value:?}")?;
            out.push('"');
            Ok(())
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| {
            out.push('"');
            write!(JsonEscaped(&mut *out), "{value}")?;
            out.push('"');
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |out| write_f64(out, value));
    }
}

/// Writes `value` as a JSON number, or as a string when it is NaN or infinite (JSON has
/// neither). A value with at most three decimals (a duration in milliseconds from
/// microseconds) is written from integers, as `Display` would write it.
fn write_f64(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    if !value.is_finite() {
        return write!(out, "\"{value}\"");
    }
    let thousandths = (value * 1000.0).round();
    if value >= 0.0 && thousandths < 1e15 && thousandths / 1000.0 == value {
        let thousandths = thousandths as u64;
        let mut digits = itoa::Buffer::new();
        out.write_str(digits.format(thousandths / 1000))?;
        let mut fraction = thousandths % 1000;
        if fraction > 0 {
            let mut width = 3;
            while fraction.is_multiple_of(10) {
                fraction /= 10;
                width -= 1;
            }
            out.write_char('.')?;
            let fraction = digits.format(fraction);
            for _ in fraction.len()..width {
                out.write_char('0')?;
            }
            out.write_str(fraction)?;
        }
        return Ok(());
    }
    write!(out, "{value}")
}

/// The time as RFC 3339 in UTC with microseconds, `2026-12-06T12:47:35.175223Z`, as
/// tracing-subscriber writes it.
fn rfc3339(time: std::time::SystemTime) -> crate::trace::Ascii<27> {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_date((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    crate::trace::Ascii::from_ascii(out)
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `value` as a JSON string.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    // Writing into a String cannot fail.
    let _ = JsonEscaped(&mut *out).write_str(value);
    out.push('"');
}

/// A byte a JSON string cannot hold as it is (DEL is escaped too, for terminals).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f
}

/// Whether any byte of `text` needs escaping, eight bytes at a time ("Bit Twiddling Hacks":
/// `hasless` finds a byte below 0x20, `haszero` of an XOR a byte equal to one value).
fn any_needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut words = text.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        if word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0
            || has_zero(word ^ (ONES * u64::from(b'"')))
            || has_zero(word ^ (ONES * u64::from(b'\\')))
            || has_zero(word ^ (ONES * 0x7f))
        {
            return true;
        }
    }
    words.remainder().iter().any(|&byte| needs_escape(byte))
}

/// Escapes what it is given for the inside of a JSON string (RFC 8259 section 7).
struct JsonEscaped<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if !any_needs_escape(text.as_bytes()) {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

// === readable lines ===

/// tracing's readable format, with the request's trace id at the end of a line written while
/// a request is served.
struct TextLine(Format);

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(trace_id) = crate::request_log::current_trace_id() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writeln!(writer, "{} trace_id={trace_id}", line.trim_end())
    }
}

// === what a service reports ===

/// What a service reports besides its log lines: the access log by `ACCESS_LOG`, and the EMF
/// lines when they are on.
#[derive(Debug)]
pub struct Reporting {
    access_log: AccessLog,
    emf: Option<(Identity, Duration, Arc<RequestStats>)>,
}

impl Reporting {
    /// From the settings; `zone` is the task's availability zone, for the EMF lines' `Zone`
    /// (read once, with the instance's identity).
    pub fn new(
        telemetry: &Telemetry,
        listen: &Listen,
        service: &'static str,
        zone: Option<String>,
    ) -> Self {
        let emf = match telemetry.emf_interval(listen) {
            Some(interval) => {
                let identity = Identity {
                    namespace: telemetry.metrics_emf_namespace.clone(),
                    service,
                    zone,
                };
                Some((identity, interval, Arc::default()))
            }
            None => None,
        };
        Self {
            access_log: telemetry.access_log,
            emf,
        }
    }

    /// The request layer: access lines, and request counts when EMF lines are on.
    pub fn request_log(&self) -> RequestLog {
        RequestLog::new(
            self.access_log,
            self.emf.as_ref().map(|(_, _, stats)| Arc::clone(stats)),
        )
    }

    /// Starts writing EMF lines to stdout with the request metrics and what `sources` add, when
    /// they are on.
    pub fn start(self, sources: Vec<Box<dyn Source>>) -> Option<Emitter> {
        let (identity, interval, stats) = self.emf?;
        tracing::info!(
            interval = ?interval,
            namespace = %identity.namespace,
            "writing CloudWatch EMF metrics to stdout"
        );
        Some(Emitter::start(
            identity,
            interval,
            stats,
            sources,
            crate::emf::stdout(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(json: bool, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber("debug", move || writer.clone(), json);
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_are_flat_objects_with_fields_in_their_types() {
        let text = capture(true, || {
            let span = tracing::info_span!("request", route = "/");
            let _entered = span.enter();
            tracing::warn!(
                status = 503u16,
                took = 1.5,
                ok = false,
                delta = -2i64,
                addr = %"10.0.0.1:3000",
                why = ?"a \"quoted\"\nline\u{1}",
                "answered {}", "badly"
            );
        });

        assert_eq!(text.lines().count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["message"], "answered badly");
        assert_eq!(json["status"], 503);
        assert_eq!(json["took"], 1.5);
        assert_eq!(json["ok"], false);
        assert_eq!(json["delta"], -2);
        assert_eq!(json["addr"], "10.0.0.1:3000");
        assert_eq!(json["why"], "\"a \\\"quoted\\\"\\nline\\u{1}\"");
        assert_eq!(json["route"], "/");
        assert_eq!(json["target"], "common::telemetry::tests");
        assert!(json.get("trace_id").is_none());
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|key| *key != "span" && *key != "fields"),
            "{keys:?}"
        );
    }

    #[test]
    fn control_characters_and_non_finite_numbers_stay_valid_json() {
        let text = capture(true, || {
            tracing::info!(raw = "tab\tbell\u{7}del\u{7f}", nan = f64::NAN, "x");
        });
        let json: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(json["raw"], "tab\tbell\u{7}del\u{7f}");
        assert_eq!(json["nan"], "NaN");
    }

    #[test]
    fn the_word_scan_finds_what_the_byte_test_finds() {
        for byte in 0..=255u8 {
            for at in 0..20 {
                let mut text = vec![b'a'; 20];
                text[at] = byte;
                assert_eq!(
                    any_needs_escape(&text),
                    needs_escape(byte),
                    "{byte:#x} at {at}"
                );
            }
        }
    }

    #[test]
    fn times_are_rfc3339_in_utc_with_microseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        for (seconds, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000001Z"),
            (1_709_251_199, 999_999, "2024-02-29T23:59:59.999999Z"),
            (4_107_542_400, 500_000, "2100-03-01T00:00:00.500000Z"),
            (1_796_561_257, 199_000, "2026-12-06T12:47:37.199000Z"),
        ] {
            let time = UNIX_EPOCH + Duration::new(seconds, micros * 1000);
            assert_eq!(rfc3339(time).as_str(), text);
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for value in [
            0.0, 0.001, 0.067, 0.1, 1.5, 20.134, 100.0, 1234.567, 0.0001, 1e20, 2.71, -2.5,
        ] {
            let mut text = String::new();
            write_f64(&mut text, value).unwrap();
            assert_eq!(text, value.to_string(), "{value}");
            assert_eq!(text.parse::<f64>().unwrap(), value);
        }
        let mut text = String::new();
        write_f64(&mut text, f64::INFINITY).unwrap();
        assert_eq!(text, "\"inf\"");
    }

    #[test]
    fn readable_lines_outside_requests_are_tracings_own() {
        let text = capture(false, || tracing::info!(port = 3000, "serving"));
        assert!(text.contains("serving") && text.contains("3000"), "{text}");
        assert!(!text.contains("trace_id"), "{text}");
    }
}
