//! The `name` binary: parse settings, start telemetry, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

fn main() -> ExitCode {
    common::main_loop::main(
        "name",
        name::config::ABOUT,
        "name=info,common=info,tower_http=info",
        name::run,
    )
}
