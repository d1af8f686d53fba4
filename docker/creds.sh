#!/bin/sh
# The one-shot `creds` service of compose.yaml: development credentials made
# on first start only, as `just up` makes them in .data/ — the hub's authority
# (services, the CLI, the agent `docker-agent`), the edge's own authority
# (edge-admin, edge-gateway) and the hub's leaf link to the edge. The named
# volumes are mounted at the paths the nats containers see them at
# (/srv/.data/creds, /srv/.data/creds-edge), since leaf-remote.conf names the
# leaf credential by path. SYSMON_DATA moves the tree (scripts/check-compose.sh).
set -eu
data="${SYSMON_DATA:-/srv/.data}"
hub="$data/creds"
edge="$data/creds-edge"
made=""
if [ ! -f "$hub/operator.nk" ]; then
  sysmonstm creds init "$hub"
  for s in persister alerter gateway notifier cli; do
    sysmonstm creds service "$s" --dir "$hub"
  done
  sysmonstm creds agent "${SYSMON_AGENT_MACHINE:-docker-agent}" --dir "$hub"
  made=1
fi
if [ ! -f "$edge/operator.nk" ]; then
  sysmonstm creds init "$edge" --edge
  for s in edge-admin edge-gateway; do
    sysmonstm creds service "$s" --dir "$edge"
  done
  made=1
fi
# METRICS in one stream, or in SYSMON_METRICS_PARTITIONS (docs/operations.md,
# Scaling): the hub's account maps subjects by it.
parts="${SYSMON_METRICS_PARTITIONS:-1}"
if [ "$parts" != "$(cat "$hub/metrics-partitions" 2>/dev/null || echo 1)" ]; then
  sysmonstm creds partitions "$parts" --dir "$hub"
fi
if [ ! -f "$hub/leaf-remote.conf" ]; then
  sysmonstm creds leaf --dir "$edge" --hub-dir "$hub" --url "${SYSMON_LEAF_URL:-nats-leaf://edge:7422}"
  made=1
fi
# The directories stay 0700: the nats containers run as root.
if [ -n "$made" ]; then
  echo "creds: made development credentials in $hub and $edge"
else
  echo "creds: already in $hub and $edge"
fi
