//! The `hello` binary: parse settings, start telemetry, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use common::Command;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = common::parse_args::<hello::Config>("hello", hello::config::ABOUT);
    if let Some(Command::Healthcheck) = cli.command {
        return common::healthcheck::run(cli.config.listen.local_addr()).await;
    }
    if let Err(reason) = cli.config.validate() {
        eprintln!("error: {reason}");
        return ExitCode::from(2);
    }
    common::telemetry::init("hello=info,common=info,tower_http=info");
    let result = async {
        let addr = cli.config.listen.addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        hello::run(cli.config, listener, common::shutdown::signal()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "hello failed");
            ExitCode::FAILURE
        }
    }
}
