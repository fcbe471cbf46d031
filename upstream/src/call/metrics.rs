//! The calls' metrics, registered into the registry the caller gives (linkerd's
//! `Resolver::with_metrics`): attempts by outcome, retries made and refused, hedges, and
//! answers refused for their size.
//!
//! Each labelled counter is resolved once here, so counting on the request path is one atomic
//! add, with no label lookup.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How one attempt to call the upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// An answer came back.
    Ok,
    /// No connection could be made.
    ConnectError,
    /// The attempt ran out of time.
    Timeout,
    /// The instance answered with a 5xx status.
    ServerError,
    /// The instance answered with a 4xx status other than 429.
    ClientError,
    /// The instance said it is overloaded: 429, or 503 with `Retry-After`.
    Overloaded,
    /// Anything else: another status, an answer too large or that does not decode, a broken
    /// connection.
    BadResponse,
    /// A hedge answered first, and this attempt was abandoned.
    LostToHedge,
}

impl AttemptOutcome {
    const ALL: [Self; 8] = [
        Self::Ok,
        Self::ConnectError,
        Self::Timeout,
        Self::ServerError,
        Self::ClientError,
        Self::Overloaded,
        Self::BadResponse,
        Self::LostToHedge,
    ];
}

/// Label values in Prometheus's snake_case.
macro_rules! label_values {
    ($($kind:ty { $($variant:ident => $label:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                let label = match self { $(Self::$variant => $label),+ };
                EncodeLabelValue::encode(&label, encoder)
            }
        }
    )+};
}

label_values! {
    AttemptOutcome {
        Ok => "ok",
        ConnectError => "connect_error",
        Timeout => "timeout",
        ServerError => "server_error",
        ClientError => "client_error",
        Overloaded => "overloaded",
        BadResponse => "bad_response",
        LostToHedge => "lost_to_hedge",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    outcome: AttemptOutcome,
}

/// The counters calls keep.
#[derive(Debug)]
pub struct CallMetrics {
    attempts: [Counter; AttemptOutcome::ALL.len()],
    retries: Counter,
    retries_refused: Counter,
    hedges: Counter,
    hedges_won: Counter,
    answers_too_large: Counter,
}

impl CallMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let attempts = Family::<AttemptLabels, Counter>::default();
        let metrics = Self {
            attempts: AttemptOutcome::ALL
                .map(|outcome| attempts.get_or_create(&AttemptLabels { outcome }).clone()),
            retries: Counter::default(),
            retries_refused: Counter::default(),
            hedges: Counter::default(),
            hedges_won: Counter::default(),
            answers_too_large: Counter::default(),
        };
        registry.register(
            "upstream_attempts",
            "Attempts to call the upstream, by outcome",
            attempts,
        );
        registry.register(
            "upstream_retries",
            "Attempts after the first of a request",
            metrics.retries.clone(),
        );
        registry.register(
            "upstream_retries_refused",
            "Retries not made because the retry budget was spent",
            metrics.retries_refused.clone(),
        );
        registry.register(
            "upstream_hedges",
            "Second attempts sent because the first was slow",
            metrics.hedges.clone(),
        );
        registry.register(
            "upstream_hedges_won",
            "Hedges that answered before the attempt they raced",
            metrics.hedges_won.clone(),
        );
        registry.register(
            "upstream_answers_too_large",
            "Answers refused for exceeding the byte limit",
            metrics.answers_too_large.clone(),
        );
        metrics
    }

    /// Counts an attempt.
    pub fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].inc();
    }

    /// Counts a retry made.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a retry the budget refused.
    pub fn retry_refused(&self) {
        self.retries_refused.inc();
    }

    /// Counts a hedge sent.
    pub fn hedge(&self) {
        self.hedges.inc();
    }

    /// Counts a hedge that answered first.
    pub fn hedge_won(&self) {
        self.hedges_won.inc();
    }

    /// Counts an answer refused for its size.
    pub fn answer_too_large(&self) {
        self.answers_too_large.inc();
    }
}
