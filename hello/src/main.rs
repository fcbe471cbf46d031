//! The `hello` binary: parse settings, start telemetry, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

fn main() -> ExitCode {
    common::main_loop::main(
        "hello",
        hello::config::ABOUT,
        "hello=info,common=info,tower_http=info",
        hello::run,
    )
}
