//! The `healthcheck` subcommand: the images have no shell and no curl, so the binary checks
//! its own server for the container runtime's `HEALTHCHECK` and the ECS task health check.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// How long the check waits for an answer; container health checks have their own timeout
/// too, but a hung check must not outlive it.
const TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `http://<addr>/healthz`; success only on a 200.
pub async fn run(addr: SocketAddr) -> ExitCode {
    match check(addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("unhealthy: http://{addr}/healthz: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn check(addr: SocketAddr) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|err| err.to_string())?;
    let response = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map_err(|err| err.to_string())?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(()),
        status => Err(format!("status {status}")),
    }
}
