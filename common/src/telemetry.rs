//! The `tracing` subscriber: JSON lines when stdout is not a terminal (CloudWatch Logs,
//! `docker logs`), human-readable on a terminal; `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second install (another test in the same process) is refused, and that is fine.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
