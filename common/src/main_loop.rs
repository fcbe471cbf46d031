//! The `main` both binaries share: parse the settings, answer the `healthcheck` subcommand,
//! start telemetry, bind, serve until SIGTERM or Ctrl-C, and turn the outcome into an exit
//! code.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Command, ServiceConfig, parse_args};

/// Runs the service `name`: `serve` gets the parsed settings, a bound listener and the
/// shutdown signal. `default_filter` is the log filter when `RUST_LOG` is unset.
pub async fn main<C, F, Fut>(
    name: &'static str,
    about: &'static str,
    default_filter: &str,
    serve: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, crate::shutdown::Signal) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cli = parse_args::<C>(name, about);
    if let Some(Command::Healthcheck) = cli.command {
        return crate::healthcheck::run(cli.config.listen().local_addr()).await;
    }
    crate::telemetry::init(default_filter);
    let result = async {
        let shutdown = crate::shutdown::signal();
        let addr = cli.config.listen().addr();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        serve(cli.config, listener, shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
