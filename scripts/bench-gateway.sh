#!/usr/bin/env bash
# `just bench gateway`: builds the release gateway and its benchmark, then
# runs 1 000 simulated machines at 1 Hz against 200 WebSocket clients and
# prints publish→receipt p50/p99 and the gateway's CPU and RSS.
# BENCH_MACHINES, BENCH_CLIENTS, BENCH_SECONDS, BENCH_WARMUP_SECONDS change
# the load; SYSMON_BENCH_DATABASE_URL adds the history endpoint's p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sysmonstm-gateway --bin sysmonstm-gateway
cargo build --release -q -p sysmonstm-gateway --example bench_gateway
target="${CARGO_TARGET_DIR:-target}/release"
"$target/examples/bench_gateway" "$target/sysmonstm-gateway"
