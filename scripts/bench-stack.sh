#!/usr/bin/env bash
# `just bench stack [N=machines] [R=Hz] [D=minutes] [M=clients] [P=partitions]`: the whole
# stack (hub as shipped with credentials, edge over a leaf link, persister,
# alerter, gateway with M WebSocket clients) under N simulated machines at
# R Hz for D minutes, on a PostgreSQL of its own (fsync on). Prints the
# figures and writes target/bench/stack.json and target/bench/stack.svg
# (crates/loadgen/examples/bench_stack.rs says what each one is).
# Defaults: N=1000 R=1 D=1 M=20 P=1 (P: METRICS split into P streams, the
# hub's account mapping and every service set so). BENCH_WARMUP_SECONDS (10),
# BENCH_BREACH_PERCENT (10), BENCH_SILENT_PERCENT (2) tune the rest;
# BENCH_PROFILE (release) picks the binaries' cargo profile; BENCH_HUB_SYNC=default runs
# the hub without `sync_interval: always` (to tell the fsyncs' part from the rest).
# BENCH_PERF=seconds profiles the hub, the edge and the services with perf
# for that long (binaries from the `profiling` profile: release with symbols),
# and writes target/bench/flame.svg (inferno, installed on first use) and
# the top functions per process.
# BENCH_HUB_PPROF=1 opens the hub's Go profiler (goroutines, block profile) and
# prints its address. Each second the bench also records the consumers'
# unacked and redelivered counts and a disk probe's fsync latency (1 KiB
# appended and fsynced every 100 ms next to the hub's store).
# Needs the exports of scripts/install-deps.sh (the just recipe evals them).
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do
  case "$a" in
    N=*) export BENCH_MACHINES="${a#N=}" ;;
    R=*) export BENCH_RATE="${a#R=}" ;;
    D=*) export BENCH_SECONDS="$(awk -v m="${a#D=}" 'BEGIN { if (m !~ /^[0-9.]+$/ || m <= 0) exit 1; printf "%d", m * 60 }')" \
           || { echo "D must be a number of minutes, e.g. D=10" >&2; exit 2; } ;;
    M=*) export BENCH_CLIENTS="${a#M=}" ;;
    P=*) export BENCH_PARTITIONS="${a#P=}" ;;
    *) echo "unknown argument '$a'; use N=machines R=Hz D=minutes M=clients P=partitions" >&2; exit 2 ;;
  esac
done
if [ -n "${BENCH_PERF:-}" ]; then
  command -v perf >/dev/null || { echo "BENCH_PERF needs perf (Debian: linux-perf)" >&2; exit 2; }
  tools="${SYSMON_TOOLS_DIR:-$HOME/.cache/sysmonstm/tools}/inferno"
  if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    cargo install -q --locked inferno@0.12.8 --root "$tools"
  fi
  export BENCH_PROFILE="${BENCH_PROFILE:-profiling}"
  rm -f target/bench/perf.data
fi
profile="${BENCH_PROFILE:-release}"
cargo build --profile "$profile" -q -p sysmonstm-persister -p sysmonstm-alerter -p sysmonstm-gateway --bins
cargo build --profile "$profile" -q -p sysmonstm-loadgen --example bench_stack
target="${CARGO_TARGET_DIR:-target}/$profile"
pgdir="$(mktemp -d -t sysmonstm-bench-pg-XXXXXX)"
trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
# Durable settings (fsync on): the figures are what a real install gets.
admin="$(scripts/pg.sh start "$pgdir")"
BENCH_PG_PID="$(head -n 1 "$pgdir/data/postmaster.pid")" \
SYSMON_BIN_DIR="$(realpath "$target")" SYSMON_BENCH_DATABASE_URL="$admin" \
  "$target/examples/bench_stack"
if [ -n "${BENCH_PERF:-}" ] && [ -f target/bench/perf.data ]; then
  perf script -i target/bench/perf.data 2>/dev/null \
    | "$tools/bin/inferno-collapse-perf" >target/bench/perf.folded
  "$tools/bin/inferno-flamegraph" --title "just bench stack: $*" <target/bench/perf.folded >target/bench/flame.svg
  perf report -i target/bench/perf.data --no-children -g none --sort comm,dso --stdio -q 2>/dev/null \
    >target/bench/perf-processes.txt || true
  perf report -i target/bench/perf.data --no-children -g none --sort comm,sym --stdio -q --percent-limit 0.5 \
    2>/dev/null >target/bench/perf-top.txt || true
  echo "where the CPU went, per process and binary (target/bench/perf-processes.txt):"
  sed -n 1,25p target/bench/perf-processes.txt
  echo "the top functions: target/bench/perf-top.txt; the flame graph: target/bench/flame.svg"
fi
