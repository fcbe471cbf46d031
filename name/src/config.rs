//! The `name` service's settings. Every field is a flag and an environment variable of the
//! same name (`--drain-seconds`, `DRAIN_SECONDS`).

use std::time::Duration;

use common::Listen;

/// What `name --help` says the binary does.
pub const ABOUT: &str = "Answers with a random first name.";

/// Settings for one `name` instance.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where to listen and how to name this instance.
    #[command(flatten)]
    pub listen: Listen,

    /// Seconds to keep serving after SIGTERM while `/readyz` answers 503, so that callers'
    /// DNS caches let go of this instance before it stops. Set it to at least the DNS record's
    /// TTL plus the callers' refresh delay.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 0)]
    pub drain_seconds: u64,

    /// The access log and the EMF metrics.
    #[command(flatten)]
    pub telemetry: common::Telemetry,
}

impl common::ServiceConfig for Config {
    fn listen(&self) -> &Listen {
        &self.listen
    }
}

impl Config {
    /// The drain period as a duration.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}
