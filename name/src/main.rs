//! The `name` binary: parse settings, start telemetry, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use common::Command;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = common::parse_args::<name::Config>("name", name::config::ABOUT);
    if let Some(Command::Healthcheck) = cli.command {
        return common::healthcheck::run(cli.config.listen.local_addr()).await;
    }
    common::telemetry::init("name=info,common=info,tower_http=info");
    let result = async {
        let addr = cli.config.listen.addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        name::run(cli.config, listener, common::shutdown::signal()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "name failed");
            ExitCode::FAILURE
        }
    }
}
