#!/usr/bin/env bash
# `just bench gateway`: builds the release gateway and its benchmark, then
# runs 1 000 simulated machines at 1 Hz against 200 WebSocket clients and
# prints publish→receipt p50/p99 and the gateway's CPU and RSS; then the
# history endpoint's p50/p99 over 30 days of one machine, in a PostgreSQL of
# its own (kept in $BENCH_PG_DIR so a second run skips writing the 30 days).
# BENCH_MACHINES, BENCH_CLIENTS, BENCH_SECONDS, BENCH_WARMUP_SECONDS change
# the load; SYSMON_BENCH_DATABASE_URL points at another database instead.
# Needs the exports of scripts/install-deps.sh (the just recipe evals them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sysmonstm-gateway --bin sysmonstm-gateway
cargo build --release -q -p sysmonstm-e2e --example bench_gateway
target="${CARGO_TARGET_DIR:-target}/release"
if [ -z "${SYSMON_BENCH_DATABASE_URL:-}" ]; then
  pgdir="${BENCH_PG_DIR:-/var/tmp/sysmonstm-bench-pg}"
  trap 'scripts/pg.sh stop "$pgdir"' EXIT
  admin="$(scripts/pg.sh start "$pgdir")"
  "$PG_BIN/psql" "$admin" -qtAc "SELECT 1 FROM pg_database WHERE datname='bench'" | grep -q 1 \
    || "$PG_BIN/psql" "$admin" -qc "CREATE DATABASE bench"
  export SYSMON_BENCH_DATABASE_URL="${admin%/postgres}/bench"
fi
"$target/examples/bench_gateway" "$target/sysmonstm-gateway"
