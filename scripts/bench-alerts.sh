#!/usr/bin/env bash
# `just bench alerts`: builds the release alerter and drives it with 1 000
# machines at 1 Hz against 20 rules on a real nats-server (fsync always, as
# the hub); prints its CPU and the publish→event latency p50/p99.
# BENCH_MACHINES (1000), BENCH_SECONDS (60), BENCH_WARMUP_SECONDS (15).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sysmonstm-alerter --bin sysmonstm-alerter
cargo build --release -q -p sysmonstm-alerter --example bench_alerts
target="${CARGO_TARGET_DIR:-target}/release"
ALERTER_BIN="$target/sysmonstm-alerter" "$target/examples/bench_alerts"
