#!/usr/bin/env bash
# `just bench agent`: builds the agent (profile `agent`, as installed) and measures it at 1 s next to
# Debian's prometheus-node-exporter (installed here if missing), scraped 1/s.
# BENCH_SECONDS (default 180) sets the length of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/prometheus-node-exporter ]; then
  echo "installing Debian's prometheus-node-exporter (the reference) …" >&2
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-node-exporter >&2 \
    || echo "could not install prometheus-node-exporter; the reference row is left out" >&2
fi
cargo build --profile agent -q -p sysmonstm-agent --bin sysmonstm-agent
cargo build --profile agent -q -p sysmonstm-agent --example bench_agent
target="${CARGO_TARGET_DIR:-target}/agent"
"$target/examples/bench_agent" "$target/sysmonstm-agent" /usr/bin/prometheus-node-exporter
