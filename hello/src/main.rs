//! The `hello` binary: parse settings, start telemetry, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    common::main_loop::main(
        "hello",
        hello::config::ABOUT,
        "hello=info,common=info,tower_http=info",
        hello::run,
    )
}
