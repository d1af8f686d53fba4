# sysmonstm — the commands the README names.
set shell := ["bash", "-euo", "pipefail", "-c"]

run_dir := justfile_directory() / ".run"

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
    cargo clippy --workspace --all-targets -- -D warnings
    pgdir="$(mktemp -d -t sysmonstm-test-pg-XXXXXX)"
    trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
    SYSMON_TEST_DATABASE_URL="$(SYSMON_PG_FAST=1 scripts/pg.sh start "$pgdir")"
    export SYSMON_TEST_DATABASE_URL
    echo "test PostgreSQL: $SYSMON_TEST_DATABASE_URL"
    cargo test --workspace

# Build every binary (release).
build:
    cargo build --release --workspace --bins

# Run the stack natively: hub nats-server, PostgreSQL, persister and one local agent.
up: build
    #!/usr/bin/env bash
    set -euo pipefail
    eval "$(scripts/install-deps.sh)"
    mkdir -p "{{run_dir}}"
    cd "{{justfile_directory()}}"
    bin="${CARGO_TARGET_DIR:-target}/release"
    start() { # name, command...
      local name="$1"; shift
      if [ -f "{{run_dir}}/$name.pid" ] && kill -0 "$(cat "{{run_dir}}/$name.pid")" 2>/dev/null; then
        echo "$name already running (pid $(cat "{{run_dir}}/$name.pid"))"; return
      fi
      nohup "$@" >"{{run_dir}}/$name.log" 2>&1 &
      echo $! >"{{run_dir}}/$name.pid"
      echo "started $name (pid $!, log .run/$name.log)"
    }
    start nats-hub "$NATS_SERVER_BIN" -c nats/hub.conf
    db="$(scripts/pg.sh start "{{run_dir}}/pg" 5432)"
    echo "PostgreSQL on 127.0.0.1:5432 (data in .run/pg)"
    for _ in $(seq 50); do
      "$PG_BIN/psql" "$db" -qtAc "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1
    done
    "$PG_BIN/psql" "$db" -qtAc "SELECT 1 FROM pg_database WHERE datname='sysmon'" | grep -q 1 \
      || "$PG_BIN/psql" "$db" -qc "CREATE DATABASE sysmon"
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/sysmon"
    export NATS_URL="nats://127.0.0.1:4222"
    start persister "$bin/sysmonstm-persister"
    start agent "$bin/sysmonstm-agent" --state-dir "{{run_dir}}/agent"
    start gateway "$bin/sysmonstm-gateway" --listen 127.0.0.1:8080
    start alerter "$bin/sysmonstm-alerter" --rules rules.example.toml
    echo
    echo "sysmonstm is up."
    echo "  NATS hub:     nats://127.0.0.1:4222 (monitoring http://127.0.0.1:8222)"
    echo "  snapshots:    JetStream stream METRICS, subjects sysmon.metrics.<machine>"
    echo "  stored in:    $DATABASE_URL, table metrics"
    echo "  look:         $PG_BIN/psql $DATABASE_URL -c 'SELECT machine_id, ts, cpu_percent FROM metrics ORDER BY ts DESC LIMIT 5'"
    echo "  dashboard:    http://127.0.0.1:8080/ (API under /api, live feed /ws)"
    echo "  alerts:       just watch   (rules: rules.example.toml, now in KV sysmon_rules)"
    echo "  stop:         just down"

# Stop everything `just up` started.
down:
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    for name in gateway alerter agent persister nats-hub; do
      f="{{run_dir}}/$name.pid"
      if [ -f "$f" ]; then
        pid="$(cat "$f")"
        if kill "$pid" 2>/dev/null; then
          for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
          echo "stopped $name"
        fi
        rm -f "$f"
      fi
    done
    if [ -d "{{run_dir}}/pg" ]; then
      eval "$(scripts/install-deps.sh 2>/dev/null)"
      scripts/pg.sh stop "{{run_dir}}/pg" && echo "stopped PostgreSQL"
    fi

# Benchmarks that print the figures the README quotes: `just bench agent`.
bench which:
    #!/usr/bin/env bash
    set -euo pipefail
    eval "$(scripts/install-deps.sh)"
    case "{{which}}" in
      agent) scripts/bench-agent.sh ;;
      ingest) scripts/bench-persister.sh ingest ;;
      query) scripts/bench-persister.sh query ;;
      gateway) scripts/bench-gateway.sh ;;
      alerts) scripts/bench-alerts.sh ;;
      *) echo "unknown benchmark '{{which}}'; one of: agent alerts ingest query gateway" >&2; exit 2 ;;
    esac

# Print one snapshot of this machine as JSON (what the agent sees).
agent:
    cargo run -q -p sysmonstm-agent -- --once --json

# Follow alerts live from the hub (extra flags go to `sysmonstm alerts watch`, e.g. --since 1h --json).
watch *args:
    cargo run -q -p sysmonstm-cli --bin sysmonstm -- alerts watch {{args}}
