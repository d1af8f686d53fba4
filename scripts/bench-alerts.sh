#!/usr/bin/env bash
# `just bench alerts`: builds the release alerter and drives it with 1 000
# machines at 1 Hz against 20 rules on a real nats-server, with the release
# alerter as its own process; prints its CPU and the publish→event latency
# p50/p99. Runs twice: with the hub's `sync_interval: always` (what
# nats/hub.conf ships), then with nats-server's default, to show the part
# the hub's fsyncs take.
# BENCH_MACHINES (1000), BENCH_SECONDS (60), BENCH_WARMUP_SECONDS (15).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sysmonstm-alerter --bin sysmonstm-alerter
cargo build --release -q -p sysmonstm-alerter --example bench_alerts
target="${CARGO_TARGET_DIR:-target}/release"
ALERTER_BIN="$target/sysmonstm-alerter" BENCH_SYNC=always "$target/examples/bench_alerts"
echo
ALERTER_BIN="$target/sysmonstm-alerter" BENCH_SYNC=default "$target/examples/bench_alerts"
