//! Which DNS records name a service's instances.

use std::fmt;
use std::str::FromStr;

/// Which DNS records name the instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordKind {
    /// A records: one address per instance, all on the target's port.
    #[default]
    A,
    /// SRV records: a port and a target per instance; targets resolved to addresses.
    Srv,
}

impl RecordKind {
    /// The DNS record type's name: `A` or `SRV`.
    pub fn record_type(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Srv => "SRV",
        }
    }
}

impl FromStr for RecordKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "a" => Ok(Self::A),
            "srv" => Ok(Self::Srv),
            _ => Err("expected one of a, srv".into()),
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::Srv => "srv",
        })
    }
}
