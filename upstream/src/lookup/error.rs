//! Why a lookup gave no addresses: an answer that there are none, an answer that cannot be
//! right, or no answer at all.

use std::time::Duration;

use super::RecordKind;

/// Why a lookup gave no addresses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist or has no records of the type asked: an answer, meaning "no
    /// instances", valid for `ttl` when the server gave a negative TTL.
    #[error("{name} {}", if *.nxdomain { "does not exist (NXDOMAIN)".to_owned() } else { format!("has no {} records", record.record_type()) })]
    Negative {
        /// The name asked.
        name: String,
        /// The record type asked.
        record: RecordKind,
        /// True when the name does not exist at all, false when it has no such records.
        nxdomain: bool,
        /// The negative-caching TTL from the server's SOA, if any.
        ttl: Option<Duration>,
    },
    /// The service or its namespace is not registered, or lists no instances: an answer,
    /// meaning "no instances", as NXDOMAIN is.
    #[error("{name} is not registered in Cloud Map: {reason}")]
    Unregistered {
        /// The service asked, `<service>.<namespace>`.
        name: String,
        /// What the API said.
        reason: String,
    },
    /// An answer that cannot be right: DNS records for other names or of other types only, a
    /// CNAME chain that loops or does not end, an answer to another question; Cloud Map
    /// instances listed with no usable address. A fault of the server or of a resolver on the
    /// way, not a statement that there are no instances (RFC 1035 sections 7.3 and 7.4: a
    /// reply to another question, and records other than those asked, are not the answer):
    /// the last good answer stays, as after a failure (serve-stale, RFC 8767).
    #[error("broken answer for {name}: {reason}")]
    Broken {
        /// The name asked.
        name: String,
        /// What is wrong with the answer, in words.
        reason: String,
    },
    /// No answer: timeout, SERVFAIL, refused, network error. The last good answer stays.
    #[error("DNS lookup of {name} failed: {reason}")]
    Failed {
        /// The name asked.
        name: String,
        /// What went wrong, in words.
        reason: String,
    },
}

impl LookupError {
    /// True when the source answered that there are no instances (as opposed to not
    /// answering, or answering something that cannot be right): the set empties, and no
    /// backoff follows.
    pub fn is_answer(&self) -> bool {
        matches!(self, Self::Negative { .. } | Self::Unregistered { .. })
    }
}
