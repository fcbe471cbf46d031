//! The `main` both binaries share: parse the settings, answer the `healthcheck` subcommand,
//! start telemetry, bind, serve until SIGTERM or Ctrl-C, and turn the outcome into an exit
//! code.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Command, ServiceConfig, parse_args};

/// Runs the service `name`: `serve` gets the parsed settings, a bound listener and the
/// shutdown signal, on a runtime of `WORKER_THREADS` threads (one thread: Tokio's
/// current-thread scheduler, with no work stealing and no cross-thread wake-ups).
/// `default_filter` is the log filter when `RUST_LOG` is unset.
pub fn main<C, F, Fut>(
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
    let runtime = match runtime(cli.config.listen().worker_threads()) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, name, default_filter, serve))
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

async fn run<C, F, Fut>(
    cli: crate::config::Cli<C>,
    name: &'static str,
    default_filter: &str,
    serve: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, crate::shutdown::Signal) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Some(Command::Healthcheck) = cli.command {
        return crate::healthcheck::run(cli.config.listen().local_addr()).await;
    }
    crate::telemetry::init(default_filter);
    let result = async {
        let shutdown = crate::shutdown::signal();
        let addr = cli.config.listen().addr();
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
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

/// Connections the kernel queues before the server accepts them. tokio's `bind` asks for
/// std's 128: a burst of new connections (an ALB scaling out, or a flood the server is
/// shedding) overflows that, and each dropped SYN costs its client a second's retransmit.
/// The kernel caps the value at `net.core.somaxconn` (4096 on current kernels).
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted server can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test]
    async fn the_kernel_queues_a_burst_of_connections_beyond_stds_128() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts: every connection waits in the backlog. With std's 128, the SYNs past
        // it are dropped and these connects time out.
        let connected = tokio::task::spawn_blocking(move || {
            (0..400)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(connected.len(), 400);
        drop(listener);
    }
}
