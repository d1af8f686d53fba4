# sysmonstm — the commands the README names.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install what the tests and the stack need (idempotent; prints exports).
deps:
    @scripts/install-deps.sh

# Format check, clippy (-D warnings) and every test, against real servers.
test:
    #!/usr/bin/env bash
    set -euo pipefail
    # Assigned first: `eval "$(…)"` alone would ignore the script's failure.
    deps="$(scripts/install-deps.sh)"
    eval "$deps"
    cargo fmt --all -- --check
    scripts/check-compose.sh
    scripts/check-deploy.sh
    cargo clippy --workspace --all-targets -- -D warnings
    # Licences and sources of every dependency (deny.toml). Not advisories:
    # the RustSec database comes from GitHub, unreachable here.
    # `cargo fetch` first: deny reads the metadata of every crate in the lock
    # file, also those of other platforms, which a build never downloads.
    cargo fetch -q
    cargo deny --offline check licenses sources
    pgdir="$(mktemp -d -t sysmonstm-test-pg-XXXXXX)"
    trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
    SYSMON_TEST_DATABASE_URL="$(SYSMON_PG_FAST=1 scripts/pg.sh start "$pgdir")"
    export SYSMON_TEST_DATABASE_URL
    echo "test PostgreSQL: $SYSMON_TEST_DATABASE_URL"
    cargo test --workspace
    # The hostile suite attacks the binaries as shipped (panic = abort), built
    # without fat LTO to keep CI short (profile `hostile`).
    cargo build --profile hostile --bins
    SYSMON_BIN_DIR="$(realpath "${CARGO_TARGET_DIR:-target}")/hostile" \
      cargo test -p sysmonstm-hostile --test hostile -- --ignored
    # The compose stack's creds script and edge and hub configs, with these binaries.
    SYSMON_BIN_DIR="$(realpath "${CARGO_TARGET_DIR:-target}")/hostile" scripts/check-compose.sh
    # One snapshot's trace reaches an in-test OTLP receiver from every service.
    SYSMON_BIN_DIR="$(realpath "${CARGO_TARGET_DIR:-target}")/hostile" \
      cargo test -p sysmonstm-hostile --test traces -- --ignored
    # The quick start: `just up` from a clean copy of this tree on free ports
    # (these binaries, nothing rebuilt), both dashboards, the agent's snapshot
    # in the API, `alerts watch`, a second `up` that changes nothing and
    # restarts a killed gateway, `down` leaving nothing running, the data kept.
    SYSMON_BIN_DIR="$(realpath "${CARGO_TARGET_DIR:-target}")/hostile" scripts/smoke-up.sh
    # The same with METRICS split into partitions (SYSMON_METRICS_PARTITIONS).
    SYSMON_METRICS_PARTITIONS=3 SYSMON_BIN_DIR="$(realpath "${CARGO_TARGET_DIR:-target}")/hostile" scripts/smoke-up.sh
    # The agent's package installs, its unit passes systemd's own check, and
    # it is removed again.
    deb="$(scripts/package.sh)"
    sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ dpkg -i "$deb" >/dev/null
    systemd-analyze verify /lib/systemd/system/sysmonstm-agent.service
    /usr/bin/sysmonstm-agent --version
    sudo_ dpkg -r sysmonstm-agent >/dev/null
    echo "package: $deb installed, verified and removed"

# The agent's Debian package (agent binary, systemd unit, example config).
package:
    @scripts/package.sh

# Build every binary (release).
build:
    cargo build --release --workspace --bins

# Run the whole stack natively: hub and edge nats-servers, PostgreSQL, persister, alerter, notifier, gateway, edge gateway and a local agent.
up:
    @scripts/stack.sh up

# The same stack in containers (compose.yaml), where a Docker engine with the compose plugin runs.
up-docker:
    docker compose up -d --build

# Stop the containers of `just up-docker`; the named volumes keep the data.
down-docker:
    docker compose down

# Stop everything `just up` started (by pid file); the data stays in .data/.
down:
    @scripts/stack.sh down

# What runs, and where.
status:
    @scripts/stack.sh status

# The last lines of a part's log (nats-edge, nats-hub, persister, alerter, notifier, gateway, edge-gateway, agent), or of all.
logs part="":
    @scripts/stack.sh logs {{part}}

# Benchmarks that print the figures the README quotes: `just bench agent`.
# `just bench stack N=10000 R=1 D=10` runs the whole stack under N machines at R Hz for D minutes.
bench which *args:
    #!/usr/bin/env bash
    set -euo pipefail
    eval "$(scripts/install-deps.sh)"
    case "{{which}}" in
      stack) scripts/bench-stack.sh {{args}} ;;
      agent) scripts/bench-agent.sh ;;
      ingest) scripts/bench-persister.sh ingest ;;
      query) scripts/bench-persister.sh query ;;
      gateway) scripts/bench-gateway.sh ;;
      alerts) scripts/bench-alerts.sh ;;
      catchup) cargo run --release -q -p sysmonstm-loadgen --example consumer_catchup ;;
      *) echo "unknown benchmark '{{which}}'; one of: agent alerts catchup ingest query gateway stack" >&2; exit 2 ;;
    esac

# Print one snapshot of this machine as JSON (what the agent sees).
agent:
    cargo run -q -p sysmonstm-agent -- --once --json

# Follow alerts live from the hub (extra flags go to `sysmonstm alerts watch`, e.g. --since 1h --json).
watch *args:
    NATS_CREDS="${NATS_CREDS:-{{justfile_directory()}}/.data/creds/users/cli.creds}" \
      cargo run -q -p sysmonstm-cli --bin sysmonstm -- alerts watch {{args}}
