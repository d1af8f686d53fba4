#!/usr/bin/env bash
# `just bench ingest` / `just bench query`: the persister's figures, on a
# PostgreSQL of their own (TimescaleDB preloaded when installed) on this box.
# BENCH_STORAGE=plain|timescaledb|auto (default auto) picks the path;
# BENCH_SNAPSHOTS, BENCH_MACHINES, BENCH_BATCH, BENCH_ROWS tune the size.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:?ingest|query}"
pgdir="$(mktemp -d -t sysmonstm-bench-pg-XXXXXX)"
trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
# Durable settings (fsync on): the figures are what a real install gets.
SYSMON_TEST_DATABASE_URL="$(scripts/pg.sh start "$pgdir")"
export SYSMON_TEST_DATABASE_URL
cargo build --release -q -p sysmonstm-persister --example "bench_$which"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
"${CARGO_TARGET_DIR:-target}/release/examples/bench_$which"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
