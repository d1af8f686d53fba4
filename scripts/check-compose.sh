#!/usr/bin/env bash
# `just test`: compose.yaml is valid (Debian's docker-compose reads it; no
# Docker engine is needed) and matches the native stack (scripts/stack.sh):
# the same parts, published ports and environment names, a health check on
# every long-running part, and start order on health.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker-compose >/dev/null 2>&1 || { echo "check-compose: docker-compose is missing (scripts/install-deps.sh)" >&2; exit 1; }
docker-compose -f compose.yaml config -q
docker-compose -f compose.yaml config | /usr/bin/python3 -c '
import sys, yaml
c = yaml.safe_load(sys.stdin)
s = c["services"]
bad = []
def need(cond, what):
    if not cond: bad.append(what)
ports = {"hub": {4222, 8222}, "edge": {4223, 8223, 7422}, "postgres": {5432}, "persister": {9102}, "alerter": {9103}, "notifier": {9104}, "gateway": {8080}, "edge-gateway": {8081}}
for name in ["creds", "edge", "hub", "edge-setup", "postgres", "persister", "alerter", "notifier", "gateway", "edge-gateway", "agent"]:
    need(name in s, f"service {name} is missing")
for name, want in ports.items():
    got = {int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in s.get(name, {}).get("ports", [])}
    need(want <= got, f"{name} publishes {sorted(got)}, the native stack {sorted(want)}")
for name in ["edge", "hub", "postgres", "persister", "alerter", "notifier", "gateway", "edge-gateway"]:
    need("healthcheck" in s.get(name, {}), f"{name} has no health check")
for name in ["persister", "alerter", "notifier", "gateway", "edge-gateway", "agent"]:
    env = s.get(name, {}).get("environment", {})
    need("NATS_URL" in env and "NATS_CREDS" in env, f"{name} lacks NATS_URL/NATS_CREDS")
    need("OTEL_EXPORTER_OTLP_ENDPOINT" in env, f"{name} lacks OTEL_EXPORTER_OTLP_ENDPOINT")
    for dep, cond in s.get(name, {}).get("depends_on", {}).items():
        need(cond.get("condition") == "service_healthy", f"{name} waits for {dep} without its health")
    need(s.get(name, {}).get("build") is not None, f"{name} is not built from the Dockerfile")
for name in ["persister", "gateway"]:
    need("DATABASE_URL" in s.get(name, {}).get("environment", {}), f"{name} lacks DATABASE_URL")
eg = s.get("edge-gateway", {})
need("--edge" in eg.get("command", []), "edge-gateway does not run the gateway with --edge")
need("DATABASE_URL" not in eg.get("environment", {}), "the edge gateway has a DATABASE_URL")
need(eg.get("environment", {}).get("NATS_URL", "").startswith("nats://edge:"), "the edge gateway does not read the edge")
need(all("creds-edge" in str(v) for v in eg.get("volumes", [])), "the edge gateway mounts a hub credential")
need(s["persister"]["environment"].get("SYSMON_PERSISTER_METRICS_LISTEN", "").startswith("0.0.0.0:"), "persister /metrics not on 0.0.0.0")
need(s["alerter"]["environment"].get("SYSMON_ALERTER_METRICS_LISTEN", "").startswith("0.0.0.0:"), "alerter /metrics not on 0.0.0.0")
need(s["notifier"]["environment"].get("SYSMON_NOTIFIER_METRICS_LISTEN", "").startswith("0.0.0.0:"), "notifier /metrics not on 0.0.0.0")
for n in ["edge", "hub"]:
    need(s[n]["depends_on"]["creds"]["condition"] == "service_completed_successfully", f"{n} starts before the creds")
need(s["hub"]["depends_on"].get("edge", {}).get("condition") == "service_healthy", "the hub starts before the edge")
for dep in ["edge", "persister", "alerter"]:
    need(s["edge-setup"]["depends_on"].get(dep, {}).get("condition") == "service_healthy", f"edge-setup runs before {dep} is healthy")
# Third-party images are pinned to the versions the tests run: nats-server
# as scripts/install-deps.sh installs it, TimescaleDB as vendored for tests.
import re
nats_version = re.search(r"^NATS_VERSION=.([0-9.]+).", open("scripts/install-deps.sh").read(), re.M).group(1)
for name in ["hub", "edge"]:
    need(s[name].get("image", "").startswith(f"nats:{nats_version}-"), f"{name} image is not nats:{nats_version}-…")
need(s["postgres"].get("image") == "timescale/timescaledb:2.28.3-pg15", "postgres image is not timescale/timescaledb:2.28.3-pg15")
for name, svc in s.items():
    img = svc.get("image", "")
    need(svc.get("build") is not None or re.search(r":[^:]*[0-9]", img) and "latest" not in img,
         f"{name}: image {img!r} is not pinned to a version")
for v in ["creds", "creds-edge", "edge-data", "hub-data", "pg-data"]:
    need(v in c.get("volumes", {}), f"named volume {v} is missing")
if bad:
    print("check-compose: compose.yaml does not match the native stack:", *bad, sep="\n  ", file=sys.stderr)
    sys.exit(1)
'
# The Dockerfile names only files that exist in the repository.
for f in $(awk '$1 == "COPY" && $2 !~ /^--/ {for (i = 2; i < NF; i++) print $i}' Dockerfile); do
  [ "$f" = . ] || [ -e "$f" ] || { echo "check-compose: the Dockerfile copies $f, which does not exist" >&2; exit 1; }
done
if command -v hadolint >/dev/null 2>&1; then hadolint Dockerfile; fi
# With the binaries at hand (SYSMON_BIN_DIR, NATS_SERVER_BIN: `just test`
# after its build): the creds service's script makes the credentials, twice
# without harm, and the hub's container config is valid against them, laid
# out as in the container (/srv/nats, /srv/.data/creds).
if [ -n "${SYSMON_BIN_DIR:-}" ] && [ -x "${NATS_SERVER_BIN:-}" ]; then
  srv="$(mktemp -d -t sysmonstm-compose-XXXXXX)"
  trap 'rm -rf "$srv"' EXIT
  mkdir -p "$srv/.data"
  cp -r nats "$srv/nats"
  run_creds() { PATH="$SYSMON_BIN_DIR:$PATH" SYSMON_DATA="$srv/.data" sh docker/creds.sh 2>&1; }
  out="$(run_creds)" || { echo "check-compose: docker/creds.sh failed: $out" >&2; exit 1; }
  run_creds | grep -q "already" || { echo "check-compose: docker/creds.sh is not idempotent" >&2; exit 1; }
  for f in creds/users/persister.creds creds/users/alerter.creds creds/users/gateway.creds creds/users/notifier.creds \
    creds/users/cli.creds creds/users/agent-docker-agent.creds creds/leaf-remote.conf \
    creds-edge/users/edge-admin.creds creds-edge/users/edge-gateway.creds; do
    [ -f "$srv/.data/$f" ] || { echo "check-compose: docker/creds.sh made no $f" >&2; exit 1; }
  done
  for conf in edge-docker hub-docker; do
    if ! out="$(cd "$srv" && "$NATS_SERVER_BIN" -t -c "$srv/nats/$conf.conf" 2>&1)"; then
      echo "check-compose: nats/$conf.conf is not valid: $out" >&2
      exit 1
    fi
  done
  echo "compose: docker/creds.sh and nats/{hub,edge}-docker.conf work"
fi
echo "compose.yaml: valid, and matches the native stack"
