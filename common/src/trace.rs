//! One trace per request across the services: the trace context read from a request's W3C
//! `traceparent` header or the ALB's `X-Amzn-Trace-Id`, started when neither is valid, and
//! written onward for each call to another service. It owns the identifiers and the header
//! formats; which request is being served, and the log lines, belong to [`crate::request_log`].
//!
//! - `traceparent` (W3C Trace Context, <https://www.w3.org/TR/trace-context/>):
//!   `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, neither id all
//!   zeros, version `ff` forbidden. A higher version is read as the spec's versioning section
//!   says (its first four fields, the 56th character a dash), so that a newer caller still
//!   joins the trace.
//! - `X-Amzn-Trace-Id` (the ALB adds it to every request:
//!   <https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-request-tracing.html>):
//!   `;`-separated `Field=value` pairs in any order, `Root=1-<8 hex epoch>-<24 hex>`, and
//!   `Self=`, `Parent=<16 hex>`, `Sampled=0|1` or fields of an application's own. X-Ray's
//!   trace id is the same 128 bits as a W3C trace id: the 8 hex digits of the epoch followed by
//!   the 24 of the identifier (<https://docs.aws.amazon.com/xray/latest/devguide/xray-services-elb.html>;
//!   OpenTelemetry's X-Ray propagator maps them so), so both ids agree.
//!
//! `traceparent` wins when both are valid; the ALB's root is kept beside it. A header that does
//! not parse, that is longer than [`MAX_HEADER_LEN`], or that comes twice is ignored and never
//! repeated anywhere. A trace started here has the time in its first 8 hex digits, as X-Ray's
//! ids do, so that it maps to a valid X-Ray root, and is not sampled (nothing here records
//! spans).

use std::cell::RefCell;
use std::fmt;
use std::num::{NonZeroU64, NonZeroU128};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng as _, make_rng};

/// The W3C request header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The W3C response header (Trace Context Level 2): `00-<trace id>-<child id>-<flags>`, the
/// child id being this service's span for the request.
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// The ALB's and X-Ray's header.
pub const X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// Longest trace header read; a longer one is ignored. Version 00 of `traceparent` is 55
/// characters and the ALB's header about 90; the W3C spec asks receivers to refuse only
/// "prohibitively large" headers, so there is room for a future version's fields.
pub const MAX_HEADER_LEN: usize = 512;

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Length of an X-Ray root, `1-xxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx`.
const ROOT_LEN: usize = 35;

// === ids ===

/// A W3C trace id: 16 bytes, never all zeros, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(NonZeroU128);

/// A span id (W3C parent id, X-Ray segment id): 8 bytes, never all zeros, written as 16
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(NonZeroU64);

/// `N` ASCII characters on the stack (an id's hex digits, a header value), for writing an id
/// without allocating.
#[derive(Clone, Copy)]
pub struct Ascii<const N: usize>([u8; N]);

impl<const N: usize> Ascii<N> {
    /// Wraps `N` bytes that are ASCII; anything else makes [`Ascii::as_str`] empty.
    pub fn from_ascii(bytes: [u8; N]) -> Self {
        Self(bytes)
    }

    /// The characters.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Display for Ascii<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Ascii<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// `value`'s low `N * 4` bits as `N` lowercase hex digits (`N` even), a byte at a time.
fn to_hex<const N: usize>(value: u128) -> Ascii<N> {
    let mut out = [0u8; N];
    let bytes = value.to_be_bytes();
    for (pair, byte) in out.chunks_exact_mut(2).zip(&bytes[16 - N / 2..]) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    Ascii(out)
}

/// The value of hex digits, lowercase only unless `any_case`; `None` for anything else or more
/// than 32 digits.
fn from_hex(digits: &[u8], any_case: bool) -> Option<u128> {
    if digits.len() > 32 {
        return None;
    }
    let mut value = 0u128;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' if any_case => digit - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(nibble);
    }
    Some(value)
}

impl TraceId {
    /// 32 lowercase hex digits, not all zeros.
    pub fn parse(hex: &[u8]) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        from_hex(hex, false).and_then(NonZeroU128::new).map(Self)
    }

    /// A new trace id: the Unix time in seconds in the first 4 bytes, as X-Ray's ids carry
    /// it, and 12 random bytes.
    pub fn start() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let random = (u128::from(random_u64()) << 32) | u128::from(random_u64() >> 32);
        // 96 random bits are all zero once in 2^96 tries; the low bit keeps the id valid then.
        let id = (u128::from(now as u32) << 96) | random.max(1);
        Self(NonZeroU128::new(id).unwrap_or(NonZeroU128::MIN))
    }

    /// The 32 hex digits.
    pub fn hex(&self) -> Ascii<32> {
        to_hex(self.0.get())
    }

    /// The 16 bytes, most significant first, as the hex digits read.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0.get().to_be_bytes()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.hex())
    }
}

impl SpanId {
    /// 16 lowercase hex digits, not all zeros.
    pub fn parse(hex: &[u8]) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        from_hex(hex, false)
            .and_then(|value| NonZeroU64::new(value as u64))
            .map(Self)
    }

    /// 16 hex digits in either case (X-Ray's `Parent`), not all zeros.
    fn parse_any_case(hex: &[u8]) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        from_hex(hex, true)
            .and_then(|value| NonZeroU64::new(value as u64))
            .map(Self)
    }

    /// A new random span id.
    pub fn random() -> Self {
        Self(NonZeroU64::new(random_u64()).unwrap_or(NonZeroU64::MIN))
    }

    /// The 16 hex digits.
    pub fn hex(&self) -> Ascii<16> {
        to_hex(u128::from(self.0.get()))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({})", self.hex())
    }
}

thread_local! {
    /// Ids need to be unique, not secret: xoshiro256++ seeded once per thread from the
    /// thread's ChaCha generator costs a few instructions per id, and no lock.
    static IDS: RefCell<SmallRng> = RefCell::new(make_rng());
}

fn random_u64() -> u64 {
    IDS.with_borrow_mut(|rng| rng.next_u64())
}

/// An X-Ray trace root as the ALB writes it, `1-<8 hex epoch>-<24 hex>`: the same 128 bits as
/// a [`TraceId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AmznRoot(TraceId);

impl AmznRoot {
    /// `1-` then 8 hex digits, `-`, 24 hex digits (either case: X-Ray's docs say hexadecimal,
    /// and the ids are kept in lowercase), not all zeros.
    pub fn parse(root: &[u8]) -> Option<Self> {
        if root.len() != ROOT_LEN || !root.starts_with(b"1-") || root[10] != b'-' {
            return None;
        }
        let epoch = from_hex(&root[2..10], true)?;
        let id = from_hex(&root[11..], true)?;
        NonZeroU128::new((epoch << 96) | id).map(|id| Self(TraceId(id)))
    }

    /// The root of `trace`: its first 8 hex digits as the epoch, the other 24 as the id.
    pub fn of(trace: TraceId) -> Self {
        Self(trace)
    }

    /// The W3C trace id with the same bits.
    pub fn trace_id(&self) -> TraceId {
        self.0
    }

    /// The root as written in the header, lowercase.
    pub fn text(&self) -> Ascii<ROOT_LEN> {
        let hex = self.0.hex();
        let mut out = [0u8; ROOT_LEN];
        out[..2].copy_from_slice(b"1-");
        out[2..10].copy_from_slice(&hex.0[..8]);
        out[10] = b'-';
        out[11..].copy_from_slice(&hex.0[8..]);
        Ascii(out)
    }
}

impl fmt::Display for AmznRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for AmznRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmznRoot({})", self.text())
    }
}

// === parsing ===

/// A valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Traceparent {
    trace_id: TraceId,
    parent_id: SpanId,
    sampled: bool,
}

/// Parses a `traceparent` value, per the W3C spec's grammar and its rules for versions above
/// 00.
fn parse_traceparent(value: &[u8]) -> Option<Traceparent> {
    if value.len() < TRACEPARENT_LEN || value.len() > MAX_HEADER_LEN {
        return None;
    }
    let version = from_hex(&value[..2], false)?;
    let fields_end = match version {
        0xff => return None,
        0 if value.len() != TRACEPARENT_LEN => return None,
        // A higher version may append fields after a dash.
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => TRACEPARENT_LEN,
    };
    let value = &value[..fields_end];
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let flags = from_hex(&value[53..55], false)?;
    Some(Traceparent {
        trace_id: TraceId::parse(&value[3..35])?,
        parent_id: SpanId::parse(&value[36..52])?,
        sampled: flags & 1 == 1,
    })
}

/// A valid `X-Amzn-Trace-Id`: its root, and its parent and sampling decision when they are
/// well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AmznTraceId {
    root: AmznRoot,
    parent_id: Option<SpanId>,
    sampled: Option<bool>,
}

/// Parses an `X-Amzn-Trace-Id` value: exactly one valid `Root`; `Self` and fields of other
/// applications are skipped, a malformed `Parent` or `Sampled` is left out.
fn parse_amzn_trace_id(value: &[u8]) -> Option<AmznTraceId> {
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let mut root = None;
    let mut parent_id = None;
    let mut sampled = None;
    for field in value.split(|&byte| byte == b';') {
        let field = field.trim_ascii();
        let Some(equals) = field.iter().position(|&byte| byte == b'=') else {
            continue;
        };
        let (key, value) = (&field[..equals], &field[equals + 1..]);
        match key {
            b"Root" if root.is_some() => return None,
            b"Root" => root = Some(AmznRoot::parse(value)?),
            b"Parent" => parent_id = SpanId::parse_any_case(value),
            b"Sampled" => {
                sampled = match value {
                    b"1" => Some(true),
                    b"0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some(AmznTraceId {
        root: root?,
        parent_id,
        sampled,
    })
}

/// The values of `traceparent` and `X-Amzn-Trace-Id`, each when it is there exactly once: one
/// pass over the few headers of a request costs less than hashing both names.
fn trace_headers(headers: &HeaderMap) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    let (mut traceparent, mut amzn) = (Found::None, Found::None);
    for (name, value) in headers {
        if *name == TRACEPARENT {
            traceparent = traceparent.add(value);
        } else if *name == X_AMZN_TRACE_ID {
            amzn = amzn.add(value);
        }
    }
    (traceparent.single(), amzn.single())
}

/// A header's values seen so far.
enum Found<'a> {
    None,
    One(&'a HeaderValue),
    Several,
}

impl<'a> Found<'a> {
    fn add(self, value: &'a HeaderValue) -> Self {
        match self {
            Self::None => Self::One(value),
            _ => Self::Several,
        }
    }

    fn single(self) -> Option<&'a HeaderValue> {
        match self {
            Self::One(value) => Some(value),
            _ => None,
        }
    }
}

// === the request's context ===

/// Where a request's trace id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A valid `traceparent`.
    Traceparent,
    /// A valid `X-Amzn-Trace-Id` root, without a valid `traceparent`.
    AmznTraceId,
    /// Neither header was valid: the trace starts here.
    Started,
}

/// The trace a request belongs to, and this service's span in it. Small and `Copy`: the
/// request path carries it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    sampled: bool,
    amzn_root: Option<AmznRoot>,
    origin: Origin,
}

impl TraceContext {
    /// The context of a request with `headers`: its `traceparent`, else its
    /// `X-Amzn-Trace-Id`, else a new trace.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let (traceparent, amzn) = trace_headers(headers);
        let traceparent = traceparent.and_then(|value| parse_traceparent(value.as_bytes()));
        let amzn = amzn.and_then(|value| parse_amzn_trace_id(value.as_bytes()));
        match (traceparent, amzn) {
            (Some(traceparent), amzn) => Self {
                trace_id: traceparent.trace_id,
                span_id: SpanId::random(),
                parent_id: Some(traceparent.parent_id),
                sampled: traceparent.sampled,
                amzn_root: amzn.map(|amzn| amzn.root),
                origin: Origin::Traceparent,
            },
            (None, Some(amzn)) => Self {
                trace_id: amzn.root.trace_id(),
                span_id: SpanId::random(),
                parent_id: amzn.parent_id,
                sampled: amzn.sampled.unwrap_or(false),
                amzn_root: Some(amzn.root),
                origin: Origin::AmznTraceId,
            },
            (None, None) => Self::start(),
        }
    }

    /// A new trace, not sampled.
    pub fn start() -> Self {
        Self {
            trace_id: TraceId::start(),
            span_id: SpanId::random(),
            parent_id: None,
            sampled: false,
            amzn_root: None,
            origin: Origin::Started,
        }
    }

    /// The W3C trace id, the one every log line carries.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This service's span for the request.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The caller's span, when the caller sent one.
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }

    /// The caller's sampling decision.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The ALB's (or a caller's) X-Ray root, when the request carried a valid one.
    pub fn amzn_root(&self) -> Option<AmznRoot> {
        self.amzn_root
    }

    /// Where the trace id came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    fn flags(&self) -> &'static [u8; 2] {
        if self.sampled { b"01" } else { b"00" }
    }

    /// The `traceresponse` value for this request's answer: this trace, this service's span.
    pub fn traceresponse(&self) -> HeaderValue {
        let line = traceparent_line(self.trace_id, self.span_id, self.flags());
        // 55 ASCII characters: always a valid header value.
        HeaderValue::from_bytes(&line.0).unwrap_or(HeaderValue::from_static(""))
    }

    /// The headers of one call made while serving this request: each attempt and each hedge
    /// takes its own, so that each has its own span id as the callee's parent.
    pub fn attempt(&self) -> AttemptHeaders {
        let span_id = SpanId::random();
        let root = self.amzn_root.unwrap_or(AmznRoot::of(self.trace_id));
        let mut amzn = [0u8; AMZN_LEN];
        let mut at = 0;
        for part in [
            b"Root=".as_slice(),
            &root.text().0,
            b";Parent=",
            &span_id.hex().0,
            b";Sampled=",
            &self.flags()[1..],
        ] {
            amzn[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        AttemptHeaders {
            span_id,
            traceparent: traceparent_line(self.trace_id, span_id, self.flags()),
            amzn_trace_id: Ascii(amzn),
        }
    }
}

/// `00-<trace id>-<span id>-<flags>`.
fn traceparent_line(trace_id: TraceId, span_id: SpanId, flags: &[u8; 2]) -> Ascii<TRACEPARENT_LEN> {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(&trace_id.hex().0);
    out[35] = b'-';
    out[36..52].copy_from_slice(&span_id.hex().0);
    out[52] = b'-';
    out[53..].copy_from_slice(flags);
    Ascii(out)
}

/// Length of an outgoing `X-Amzn-Trace-Id`: `Root=<35>;Parent=<16>;Sampled=<1>`.
const AMZN_LEN: usize = 5 + ROOT_LEN + 8 + 16 + 9 + 1;

/// The trace headers of one outgoing call, on the stack: the same trace, a new span id.
#[derive(Debug, Clone, Copy)]
pub struct AttemptHeaders {
    span_id: SpanId,
    traceparent: Ascii<TRACEPARENT_LEN>,
    amzn_trace_id: Ascii<AMZN_LEN>,
}

impl AttemptHeaders {
    /// The call's span id: the callee's parent id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        self.traceparent.as_str()
    }

    /// The `X-Amzn-Trace-Id` value: the request's X-Ray root (the ALB's, or the trace id's),
    /// the call's span as `Parent`, the sampling decision.
    pub fn amzn_trace_id(&self) -> &str {
        self.amzn_trace_id.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn context(pairs: &[(&str, &str)]) -> TraceContext {
        TraceContext::from_headers(&headers(pairs))
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_parent_and_sampling() {
        let ctx = context(&[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]);

        assert_eq!(ctx.origin(), Origin::Traceparent);
        assert_eq!(ctx.trace_id().hex().as_str(), TRACE);
        assert_eq!(ctx.parent_id().unwrap().hex().as_str(), PARENT);
        assert!(ctx.sampled());
        assert_ne!(ctx.span_id().hex().as_str(), PARENT);
        // Flags are a bit field: 09 is sampled with another bit set.
        assert!(context(&[("traceparent", &format!("00-{TRACE}-{PARENT}-09"))]).sampled());
        assert!(!context(&[("TraceParent", &format!("00-{TRACE}-{PARENT}-00"))]).sampled());
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        let zeros32 = "0".repeat(32);
        let long = format!("01-{TRACE}-{PARENT}-01-{}", "x".repeat(MAX_HEADER_LEN));
        for bad in [
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", PARENT.to_uppercase()),
            format!("00-{zeros32}-{PARENT}-01"),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("00-{TRACE}-{PARENT}-1"),
            format!("00-{TRACE}-{PARENT}-0g"),
            format!("00_{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}_{PARENT}-01"),
            format!("00-{}-{PARENT}-01", &TRACE[1..]),
            format!("0-{TRACE}-{PARENT}-01"),
            format!("01-{TRACE}-{PARENT}-01x"),
            long,
            String::new(),
        ] {
            let ctx = context(&[("traceparent", &bad)]);
            assert_eq!(ctx.origin(), Origin::Started, "{bad}");
            assert_ne!(ctx.trace_id().hex().as_str(), TRACE, "{bad}");
        }
    }

    #[test]
    fn a_higher_version_is_read_by_its_first_fields() {
        let ctx = context(&[(
            "traceparent",
            &format!("cc-{TRACE}-{PARENT}-01-what-comes-next"),
        )]);
        assert_eq!(ctx.origin(), Origin::Traceparent);
        assert_eq!(ctx.trace_id().hex().as_str(), TRACE);
    }

    #[test]
    fn two_traceparents_are_ambiguous_and_ignored() {
        let value = format!("00-{TRACE}-{PARENT}-01");
        let ctx = context(&[("traceparent", &value), ("traceparent", &value)]);
        assert_eq!(ctx.origin(), Origin::Started);
    }

    #[test]
    fn the_albs_root_gives_the_same_trace_id_in_w3c_form() {
        let ctx = context(&[(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )]);

        assert_eq!(ctx.origin(), Origin::AmznTraceId);
        assert_eq!(
            ctx.trace_id().hex().as_str(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(
            ctx.amzn_root().unwrap().text().as_str(),
            "1-5759e988-bd862e3fe1be46a994272793"
        );
        assert_eq!(ctx.parent_id().unwrap().hex().as_str(), "53995c3f42cd8ad8");
        assert!(ctx.sampled());
    }

    #[test]
    fn amzn_fields_come_in_any_order_with_self_and_custom_fields() {
        for value in [
            "Self=1-67891233-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678",
            "Self=1-67891233-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678;CalledFrom=app",
            "Root=1-67891233-ABCDEF012345678912345678",
            " Sampled=0 ; Root=1-67891233-abcdef012345678912345678 ;Parent=zz",
        ] {
            let ctx = context(&[("x-amzn-trace-id", value)]);
            assert_eq!(ctx.origin(), Origin::AmznTraceId, "{value}");
            assert_eq!(
                ctx.trace_id().hex().as_str(),
                "67891233abcdef012345678912345678",
                "{value}"
            );
            assert!(!ctx.sampled(), "{value}");
            assert_eq!(ctx.parent_id(), None, "{value}");
        }
    }

    #[test]
    fn malformed_amzn_headers_start_a_new_trace() {
        for bad in [
            "Self=1-67891233-12456789abcdef012345678".to_owned(),
            "Root=2-67891233-abcdef012345678912345678".to_owned(),
            "Root=1-6789123-abcdef0123456789123456789".to_owned(),
            "Root=1-67891233-abcdef01234567891234567".to_owned(),
            "Root=1-67891233-abcdef01234567891234567g".to_owned(),
            "Root=1-00000000-000000000000000000000000".to_owned(),
            "Root=1-67891233-abcdef012345678912345678;Root=1-67891233-abcdef012345678912345679"
                .to_owned(),
            format!(
                "Root=1-67891233-abcdef012345678912345678;Pad={}",
                "x".repeat(MAX_HEADER_LEN)
            ),
            "root=1-67891233-abcdef012345678912345678".to_owned(),
        ] {
            let ctx = context(&[("x-amzn-trace-id", &bad)]);
            assert_eq!(ctx.origin(), Origin::Started, "{bad}");
            assert_eq!(ctx.amzn_root(), None, "{bad}");
        }
    }

    #[test]
    fn traceparent_wins_and_the_albs_root_is_kept_beside_it() {
        let ctx = context(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-00")),
            (
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            ),
        ]);
        assert_eq!(ctx.trace_id().hex().as_str(), TRACE);
        assert!(!ctx.sampled());
        assert_eq!(
            ctx.amzn_root().unwrap().to_string(),
            "1-5759e988-bd862e3fe1be46a994272793"
        );
    }

    #[test]
    fn a_started_trace_carries_the_time_and_random_bits() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ctx = context(&[]);
        let other = TraceContext::start();

        let hex = ctx.trace_id().hex();
        let epoch = u64::from_str_radix(&hex.as_str()[..8], 16).unwrap();
        assert!(epoch.abs_diff(before) <= 2, "{hex}");
        assert_eq!(ctx.origin(), Origin::Started);
        assert!(!ctx.sampled());
        assert_eq!(ctx.parent_id(), None);
        assert_ne!(ctx.trace_id(), other.trace_id());
        assert_ne!(ctx.span_id(), other.span_id());
        assert!(TraceId::parse(hex.as_str().as_bytes()).is_some());
    }

    #[test]
    fn each_attempt_has_its_own_span_in_both_headers() {
        let ctx = context(&[(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        )]);
        let first = ctx.attempt();
        let second = ctx.attempt();

        assert_ne!(first.span_id(), second.span_id());
        assert_ne!(first.span_id(), ctx.span_id());
        let callee = context(&[
            ("traceparent", first.traceparent()),
            ("x-amzn-trace-id", first.amzn_trace_id()),
        ]);
        assert_eq!(callee.origin(), Origin::Traceparent);
        assert_eq!(callee.trace_id(), ctx.trace_id());
        assert_eq!(callee.parent_id(), Some(first.span_id()));
        assert!(callee.sampled());
        assert_eq!(callee.amzn_root(), ctx.amzn_root());
        assert_eq!(
            first.amzn_trace_id(),
            format!(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent={};Sampled=1",
                first.span_id()
            )
        );
        // Read alone, the X-Ray header names the same trace.
        let xray_only = context(&[("x-amzn-trace-id", second.amzn_trace_id())]);
        assert_eq!(xray_only.trace_id(), ctx.trace_id());
        assert_eq!(xray_only.parent_id(), Some(second.span_id()));
    }

    #[test]
    fn a_started_trace_sends_its_own_id_as_the_xray_root() {
        let ctx = TraceContext::start();
        let attempt = ctx.attempt();
        let hex = ctx.trace_id().hex();
        let root = format!("Root=1-{}-{};", &hex.as_str()[..8], &hex.as_str()[8..]);
        assert!(attempt.amzn_trace_id().starts_with(&root), "{attempt:?}");
        assert!(attempt.traceparent().ends_with("-00"));
    }

    #[test]
    fn traceresponse_names_the_trace_and_this_services_span() {
        let ctx = context(&[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]);
        assert_eq!(
            ctx.traceresponse().to_str().unwrap(),
            format!("00-{TRACE}-{}-01", ctx.span_id())
        );
    }
}
