# syntax=docker/dockerfile:1
# One image for every sysmonstm binary (agent, persister, alerter, gateway and
# the `sysmonstm` CLI); compose.yaml picks the binary per service.
#
#   planner  computes the dependency recipe from the manifests (cargo-chef)
#   builder  builds the dependencies first (a layer reused until Cargo.toml or
#            Cargo.lock changes), then the workspace itself
#   runtime  debian:bookworm-slim, the binaries and a non-root user
ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS chef
# The gateway's build script bundles the dashboard (web/) with esbuild.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: cached until the manifests change.
RUN cargo chef cook --release --recipe-path recipe.json
# The dashboard's npm packages: cached until the lock file changes.
COPY web/package.json web/package-lock.json web/
RUN cd web && npm ci --no-audit --no-fund
COPY . .
RUN cargo build --release --bins --locked \
 && mkdir -p /out \
 && cp target/release/sysmonstm target/release/sysmonstm-agent \
       target/release/sysmonstm-persister target/release/sysmonstm-alerter \
       target/release/sysmonstm-gateway target/release/sysmonstm-notifier /out/

FROM debian:bookworm-slim AS runtime
# curl for the health checks only; ca-certificates for TLS to NATS or an
# OTLP collector.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sysmon \
 && useradd --system --uid 10001 --gid sysmon --home-dir /var/lib/sysmonstm --create-home sysmon \
 && mkdir -p /creds /srv/.data/creds /srv/.data/creds-edge /var/lib/sysmonstm/agent \
 && chown -R sysmon:sysmon /creds /srv/.data /var/lib/sysmonstm
COPY --from=builder /out/ /usr/local/bin/
COPY rules.example.toml /etc/sysmonstm/rules.toml
COPY config/notifier.toml /etc/sysmonstm/notifier.toml
COPY docker/creds.sh /usr/local/bin/sysmonstm-dev-creds
USER 10001:10001
WORKDIR /var/lib/sysmonstm
# Logs are JSON when stderr is not a terminal (kit::telemetry).
ENV RUST_LOG=info
CMD ["sysmonstm", "--help"]
