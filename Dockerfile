# One Dockerfile, two images: `name` and `hello`, each a static binary in an empty (`scratch`)
# image that runs as a non-root user and checks its own health through `<binary> healthcheck`.
# hello's image also carries a CA bundle at /etc/ssl/certs/ca-certificates.crt, where rustls
# looks, for HTTPS to Cloud Map's API (DISCOVERY=cloudmap); name's calls nothing over TLS.
#
# Two ways to get the binaries into the images; both end in the same runtime stages below.
#
#   From source (the default, for users and for deployment):
#       docker build --target name  -t name  .
#       docker build --target hello -t hello .
#     compiles inside a pinned Rust image, with the dependencies cached in their own layer by
#     cargo-chef. Needs a registry to pull the Rust image from.
#
#   From binaries built on the host (CI and offline machines, which cannot pull images):
#       RUSTFLAGS="-C target-feature=+crt-static" \
#         cargo build --release --locked --target x86_64-unknown-linux-gnu
#       cp /etc/ssl/certs/ca-certificates.crt target/      # the host's CA bundle, for hello
#       docker build --target name-local  -t name  .
#       docker build --target hello-local -t hello .
#     or `BINARIES=local docker compose up --build`; `scripts/compose-e2e` does this.
#
# Stage order matters. The legacy builder (DOCKER_BUILDKIT=0, and docker-compose 1.29) builds
# every stage up to the target, used or not; BuildKit builds only what the target needs. So the
# `*-local` targets come before anything that pulls an image, and the stages before the Rust
# ones succeed even when no binary was built on the host.

# ---------------------------------------------------------------------------------------------
# Runtime: what both images are, whichever way their binary was built.

FROM scratch AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT-0" \
      org.opencontainers.image.base.name="scratch"
# The distroless `nonroot` user; no /etc/passwd is needed for a numeric user.
USER 65532:65532
EXPOSE 3000

FROM runtime AS name-runtime
LABEL org.opencontainers.image.title="name" \
      org.opencontainers.image.description="Answers with a random first name and the instance that chose it."
ENTRYPOINT ["/name"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/name", "healthcheck"]

FROM runtime AS hello-runtime
LABEL org.opencontainers.image.title="hello" \
      org.opencontainers.image.description="Greets with a name from the name service, found through DNS service discovery."
ENTRYPOINT ["/hello"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/hello", "healthcheck"]

# ---------------------------------------------------------------------------------------------
# Binaries built on the host: static executables, so they run in `scratch`.

FROM scratch AS host-binaries
ARG HOST_TARGET=x86_64-unknown-linux-gnu
# The legacy builder keeps this stage as an untagged image; the label lets scripts remove it.
LABEL hello-name.stage="host-binaries"
# The bracket globs let a missing binary match nothing instead of failing the build: a build
# from source with the legacy builder passes through this stage with no binaries on the host.
# Cargo.lock only keeps the source list from being empty, which the legacy builder rejects.
# target/ca-certificates.crt is the host's CA bundle, staged by scripts/compose-lib.sh.
COPY Cargo.lock target/${HOST_TARGET}/release/nam[e] target/${HOST_TARGET}/release/hell[o] \
     target/ca-certificate[s].crt /out/
# An always-present empty directory: copied together with a glob that may match nothing, it
# keeps the COPY in the next stages from ever having no source.
WORKDIR /empty

FROM name-runtime AS name-local
COPY --from=host-binaries /empty /out/nam[e] /

FROM hello-runtime AS hello-local
COPY --from=host-binaries /empty /out/hell[o] /
COPY --from=host-binaries /empty /out/ca-certificate[s].crt /etc/ssl/certs/

# ---------------------------------------------------------------------------------------------
# Binaries built from source. Static glibc executables (`+crt-static`) for the host's own
# architecture: the services resolve DNS with hickory and connect to IP addresses, so glibc's
# NSS (the part that does not link statically) is never used.

FROM rust:1.95.0-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never
# The target triple is passed explicitly so that RUSTFLAGS reach only the binaries, not build
# scripts or proc macros, which must stay dynamic.
RUN rustc -vV | sed -n 's/^host: //p' > /target-triple

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY name name
COPY hello hello
COPY upstream upstream
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is rebuilt when Cargo.toml or Cargo.lock change, not the code.
RUN cargo chef cook --release --target "$(cat /target-triple)" --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY name name
COPY hello hello
COPY upstream upstream
RUN target="$(cat /target-triple)" \
 && cargo build --release --locked --target "$target" --bin name --bin hello \
 && mkdir /out \
 && cp "target/$target/release/name" "target/$target/release/hello" /out/

FROM name-runtime AS name
COPY --from=builder /out/name /name

FROM hello-runtime AS hello
COPY --from=builder /out/hello /hello
# The Rust image's own bundle: its Dockerfile installs Debian's ca-certificates package and
# keeps it (rust-lang/docker-rust, */bookworm/slim/Dockerfile).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/

# Aliases so that a build argument can pick the path: `--target name-${BINARIES}`.
FROM name AS name-source
FROM hello AS hello-source
