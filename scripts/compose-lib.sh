# Shared by scripts/demo and scripts/compose-e2e (sourced, not run): finding Compose and
# building the static binaries the images' local path copies.
# shellcheck shell=bash

# Sets the array `compose` to the Compose command ("docker compose" v2, or docker-compose 1.29)
# and exports it as COMPOSE_CMD for the tests; calls `die` when neither is installed.
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
  else
    die "neither 'docker compose' (v2) nor 'docker-compose' is installed"
  fi
  COMPOSE_CMD="${compose[*]}"
  export COMPOSE_CMD
}

# Builds static release binaries of name and hello for the host into ROOT/target/<triple>/,
# where the Dockerfile's local path copies them from, and exports HOST_TARGET for Compose.
build_static_binaries() {
  HOST_TARGET="$(rustc -vV | sed -n 's/^host: //p')"
  export HOST_TARGET
  case "${HOST_TARGET}" in
    x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu) ;;
    *) die "the images' local path takes Linux glibc binaries; this host is ${HOST_TARGET}" ;;
  esac
  echo "building static release binaries for ${HOST_TARGET}"
  CARGO_TARGET_DIR="${ROOT}/target" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "${HOST_TARGET}" --bin name --bin hello
  # hello's image needs a CA bundle for HTTPS to Cloud Map (Dockerfile, host-binaries stage).
  cp /etc/ssl/certs/ca-certificates.crt "${ROOT}/target/ca-certificates.crt" \
    || die "no CA bundle at /etc/ssl/certs/ca-certificates.crt to put in hello's image"
}

# Builds the upstream crate's `call` example as a static binary for the host (a debug build:
# it runs once per request in the tests) and exports CALL_EXAMPLE, its path, for the compose
# tests, which run it in a container on the demo's network. Needs HOST_TARGET
# (build_static_binaries sets it).
build_static_call_example() {
  echo "building the call example (static) for ${HOST_TARGET}"
  CARGO_TARGET_DIR="${ROOT}/target" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --target "${HOST_TARGET}" -p upstream --example call
  CALL_EXAMPLE="${ROOT}/target/${HOST_TARGET}/debug/examples/call"
  export CALL_EXAMPLE
}
