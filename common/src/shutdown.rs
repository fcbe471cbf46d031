//! Shutdown signals. ECS stops a task with SIGTERM (then SIGKILL after `stopTimeout`); a
//! terminal sends SIGINT. Both mean the same here.

use std::future::Future;
use std::pin::Pin;

use tokio::signal::unix::{self, SignalKind};

/// A shutdown trigger: completes when the service should stop.
pub type Signal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Completes when the process receives SIGTERM or SIGINT. The handlers are installed when
/// this is called, not when the future is first polled, so that a signal during start-up (say,
/// while the task metadata endpoint is read) is not the default action's exit 143.
pub fn signal() -> Signal {
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    Box::pin(async move {
        tokio::select! {
            () = interrupt => {}
            () = terminate => {}
        }
    })
}

/// Installs a handler for `kind` now; the future completes on the first such signal.
fn listen(kind: SignalKind, name: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let stream = unix::signal(kind);
    async move {
        match stream {
            Ok(mut stream) => {
                stream.recv().await;
                tracing::info!(signal = name, "shutting down");
            }
            Err(err) => {
                tracing::error!(error = %err, signal = name, "cannot listen for the signal");
                std::future::pending::<()>().await;
            }
        }
    }
}
