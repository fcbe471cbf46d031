//! Tracing headers for each attempt: a call may carry a trace context (W3C Trace Context's
//! trace id and sampled flag, and the Root of the ALB's `X-Amzn-Trace-Id`), and every attempt
//! of it, each retry and each hedge, is sent as its own span: `traceparent` with the call's
//! trace id and a parent id of the attempt's own, and `X-Amzn-Trace-Id` with the Root and the
//! same parent id when a Root was given.
//!
//! - <https://www.w3.org/TR/trace-context/#traceparent-header>: `00-<32 hex trace id>-<16 hex
//!   parent id>-<2 hex flags>`, lowercase; neither id all zeros; flag `01` is sampled.
//! - <https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-request-tracing.html>:
//!   `X-Amzn-Trace-Id: Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
//!
//! The lines are written straight into the attempt's request head, and the parent ids drawn
//! from a per-thread generator (SplitMix64, seeded once per thread from the system's
//! randomness): no allocation, a few instructions per attempt.

use std::cell::Cell;
use std::fmt;
use std::num::NonZeroU64;

use crate::transport::http1::AttemptFields;

/// Length of an `X-Amzn-Trace-Id` Root: `1-` and 8 hex digits, `-` and 24 hex digits.
const ROOT_LEN: usize = 35;

/// Why a trace context was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// A trace id of zeros is invalid.
    #[error("a trace id must not be all zeros (W3C Trace Context)")]
    ZeroTraceId,
    /// The Root is not `1-<8 hex>-<24 hex>`.
    #[error("an X-Amzn-Trace-Id root is 1-<8 hex digits>-<24 hex digits>")]
    BadRoot,
}

/// The trace a call belongs to: attach it to a [`Request`](crate::Request) and each attempt
/// carries `traceparent` (and `X-Amzn-Trace-Id` with a Root) with a parent id of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    sampled: bool,
    root: Option<[u8; ROOT_LEN]>,
}

/// A span id: the parent id an attempt sent, shown as 16 lowercase hex digits; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(NonZeroU64);

impl TraceContext {
    /// A context for the trace `trace_id`; `sampled` is the W3C sampled flag. A trace id of
    /// zeros is invalid.
    pub fn new(trace_id: [u8; 16], sampled: bool) -> Result<Self, TraceError> {
        if trace_id == [0; 16] {
            return Err(TraceError::ZeroTraceId);
        }
        Ok(Self {
            trace_id,
            sampled,
            root: None,
        })
    }

    /// Also sends `X-Amzn-Trace-Id` with this Root (the ALB's, such as
    /// `1-5759e988-bd862e3fe1be46a994272793`), the attempt's parent id and the sampled flag.
    pub fn with_amzn_root(mut self, root: &str) -> Result<Self, TraceError> {
        let bytes = root.as_bytes();
        let shaped = bytes.len() == ROOT_LEN
            && bytes.starts_with(b"1-")
            && bytes[10] == b'-'
            && bytes[2..10]
                .iter()
                .chain(&bytes[11..])
                .all(u8::is_ascii_hexdigit);
        if !shaped {
            return Err(TraceError::BadRoot);
        }
        let mut kept = [0; ROOT_LEN];
        kept.copy_from_slice(bytes);
        self.root = Some(kept);
        Ok(self)
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The sampled flag.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The attempt of the call whose parent id is `parent`.
    pub(crate) fn attempt(&self, parent: SpanId) -> AttemptTrace<'_> {
        AttemptTrace {
            context: self,
            parent,
        }
    }
}

/// One attempt's trace: the call's context and the attempt's parent id. Its header lines
/// (hex digits and the checked Root only) are written straight into the request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptTrace<'a> {
    context: &'a TraceContext,
    parent: SpanId,
}

impl AttemptFields for AttemptTrace<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let context = self.context;
        let flag = if context.sampled { b'1' } else { b'0' };
        out.extend_from_slice(b"traceparent: 00-");
        push_hex(out, &context.trace_id);
        out.push(b'-');
        push_hex(out, &self.parent.to_bytes());
        out.extend_from_slice(&[b'-', b'0', flag, b'\r', b'\n']);
        if let Some(root) = &context.root {
            out.extend_from_slice(b"x-amzn-trace-id: Root=");
            out.extend_from_slice(root);
            out.extend_from_slice(b";Parent=");
            push_hex(out, &self.parent.to_bytes());
            out.extend_from_slice(b";Sampled=");
            out.extend_from_slice(&[flag, b'\r', b'\n']);
        }
    }
}

/// Appends `bytes` as lowercase hex digits.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        out.extend_from_slice(&hex(byte));
    }
}

impl SpanId {
    /// A random span id, never zero: the parent id of a new attempt.
    pub(crate) fn fresh() -> Self {
        loop {
            if let Some(id) = NonZeroU64::new(next_random()) {
                return Self(id);
            }
        }
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.get().to_be_bytes()
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.to_bytes() {
            let [high, low] = hex(byte);
            write!(f, "{}{}", high as char, low as char)?;
        }
        Ok(())
    }
}

/// A byte as two lowercase hex digits.
fn hex(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 15)],
    ]
}

thread_local! {
    /// This thread's SplitMix64 state, seeded once from the system's randomness.
    static STATE: Cell<u64> = Cell::new(rand::random());
}

/// The next number of this thread's SplitMix64 sequence (Steele, Lea and Flood, 2014): a fast
/// generator whose outputs are unique over its period, good for ids, not for secrets.
fn next_random() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_ID: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];

    fn lines(attempt: &AttemptTrace<'_>) -> String {
        let mut out = Vec::new();
        attempt.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_attempt_has_the_trace_id_and_a_parent_id_of_its_own() {
        let context = TraceContext::new(TRACE_ID, true).unwrap();
        let (one, two) = (SpanId::fresh(), SpanId::fresh());
        assert_ne!(one, two);
        let first = context.attempt(one);
        let line = lines(&first);
        assert_eq!(
            line,
            format!(
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01\r\n",
                one
            )
        );
        assert_eq!(one.to_string().len(), 16);
        assert_ne!(lines(&context.attempt(two)), line);
    }

    #[test]
    fn a_root_adds_the_amazon_line_with_the_same_parent() {
        let context = TraceContext::new(TRACE_ID, false)
            .unwrap()
            .with_amzn_root("1-5759e988-bd862e3fe1be46a994272793")
            .unwrap();
        let parent = SpanId::fresh();
        let text = lines(&context.attempt(parent));
        assert_eq!(
            text,
            format!(
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{parent}-00\r\n\
                 x-amzn-trace-id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent={parent};Sampled=0\r\n"
            )
        );
    }

    #[test]
    fn bad_ids_and_roots_are_refused() {
        assert_eq!(
            TraceContext::new([0; 16], true),
            Err(TraceError::ZeroTraceId)
        );
        let context = TraceContext::new(TRACE_ID, true).unwrap();
        for bad in [
            "",
            "1-5759e988-bd862e3fe1be46a99427279",
            "2-5759e988-bd862e3fe1be46a994272793",
            "1-5759e988_bd862e3fe1be46a994272793",
            "1-5759e98g-bd862e3fe1be46a994272793",
            "1-5759e988-bd862e3fe1be46a99427\r\n93",
        ] {
            assert_eq!(
                context.with_amzn_root(bad),
                Err(TraceError::BadRoot),
                "{bad}"
            );
        }
    }
}
