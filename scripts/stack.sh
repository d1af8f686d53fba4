#!/usr/bin/env bash
# The whole stack on this machine, natively (no Docker engine needed):
#   scripts/stack.sh up        install what is missing, build, make development
#                              credentials on first run, start what is not running,
#                              wait until each part is ready, print where to look
#   scripts/stack.sh down      stop what `up` started (by pid file), keep the data
#   scripts/stack.sh status    what runs, and where
#   scripts/stack.sh logs [S]  the last lines of one part's log, or of all
# Everything lives under .data/ (never committed): creds/ (the hub's operator),
# creds-edge/ (the edge's own operator), hub/, edge/, pg/, agent/, run/ (pid
# files, logs and the servers' configs on this stack's ports). A second `up`
# while the stack runs changes nothing and restarts only a part that died.
#
# Ports (docs/operations.md): DESIGN.md's defaults, each overridable by its
# variable; what `up` used is kept in .data/ports and used again unless a
# variable says otherwise (so `down`, `status` and a second `up` need none):
#   SYSMON_HUB_PORT 4222, SYSMON_HUB_MONITOR_PORT 8222, SYSMON_EDGE_PORT 4223,
#   SYSMON_EDGE_MONITOR_PORT 8223, SYSMON_EDGE_LEAF_PORT 7422,
#   SYSMON_DASHBOARD_PORT 8080, SYSMON_EDGE_DASHBOARD_PORT 8081, SYSMON_EDGE_METRICS_PORT 9105,
#   SYSMON_PG_PORT (5432, or the next free one from 55432 if 5432 is taken),
#   SYSMON_PERSISTER_METRICS_LISTEN 127.0.0.1:9102,
#   SYSMON_ALERTER_METRICS_LISTEN 127.0.0.1:9103 and
#   SYSMON_NOTIFIER_METRICS_LISTEN 127.0.0.1:9104 (the services' own settings).
# A port another process holds stops `up` with the port and its variable.
# SYSMON_BIN_DIR: binaries built already (`just test` passes its own); then
# nothing is built. SYSMON_PROFILE: the cargo profile to build (release).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
data="$root/.data"
run="$data/run"
profile="${SYSMON_PROFILE:-release}"
parts=(nats-edge nats-hub persister alerter notifier gateway edge-gateway agent)

log() { echo "stack: $*" >&2; }
die() {
  log "$*"
  exit 1
}

pid_of() { cat "$run/$1.pid" 2>/dev/null || true; }
# runs PID: the process runs. One that died and waits for its reaper (a
# zombie: after `kill -9`, init can take seconds to reap) does not run.
runs() {
  local st
  st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  [ -n "$st" ] && [ "$st" != Z ]
}
alive() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && runs "$p"; }

# The ports: a variable, else what the last `up` used, else the default.
port_vars=(SYSMON_HUB_PORT SYSMON_HUB_MONITOR_PORT SYSMON_EDGE_PORT SYSMON_EDGE_MONITOR_PORT
  SYSMON_EDGE_LEAF_PORT SYSMON_DASHBOARD_PORT SYSMON_EDGE_DASHBOARD_PORT SYSMON_EDGE_METRICS_PORT
  SYSMON_PERSISTER_METRICS_LISTEN SYSMON_ALERTER_METRICS_LISTEN SYSMON_NOTIFIER_METRICS_LISTEN)
declare -A port_default=(
  [SYSMON_HUB_PORT]=4222 [SYSMON_HUB_MONITOR_PORT]=8222 [SYSMON_EDGE_PORT]=4223
  [SYSMON_EDGE_MONITOR_PORT]=8223 [SYSMON_EDGE_LEAF_PORT]=7422 [SYSMON_DASHBOARD_PORT]=8080
  [SYSMON_EDGE_DASHBOARD_PORT]=8081 [SYSMON_EDGE_METRICS_PORT]=9105 [SYSMON_PERSISTER_METRICS_LISTEN]=127.0.0.1:9102
  [SYSMON_ALERTER_METRICS_LISTEN]=127.0.0.1:9103 [SYSMON_NOTIFIER_METRICS_LISTEN]=127.0.0.1:9104)
load_ports() {
  local v saved
  for v in "${port_vars[@]}"; do
    saved="$(sed -n "s/^$v=//p" "$data/ports" 2>/dev/null | tail -n 1 || true)"
    printf -v "$v" '%s' "${!v:-${saved:-${port_default[$v]}}}"
    [[ "${!v}" =~ ^([0-9.]+:)?[0-9]{1,5}$ ]] || die "$v=${!v} is not a port (or, for the metrics, host:port)"
  done
  hub_port="$SYSMON_HUB_PORT" hub_mon="$SYSMON_HUB_MONITOR_PORT"
  edge_port="$SYSMON_EDGE_PORT" edge_mon="$SYSMON_EDGE_MONITOR_PORT" leaf_port="$SYSMON_EDGE_LEAF_PORT"
  web_port="$SYSMON_DASHBOARD_PORT" edge_web_port="$SYSMON_EDGE_DASHBOARD_PORT"
  edge_metrics_port="$SYSMON_EDGE_METRICS_PORT"
  persister_ops="$(ops_addr "$SYSMON_PERSISTER_METRICS_LISTEN")"
  alerter_ops="$(ops_addr "$SYSMON_ALERTER_METRICS_LISTEN")"
  notifier_ops="$(ops_addr "$SYSMON_NOTIFIER_METRICS_LISTEN")"
}
save_ports() {
  local v
  for v in "${port_vars[@]}"; do echo "$v=${!v}"; done >"$data/ports"
}

# A service's metrics address as given (host:port, or a port alone).
ops_addr() { if [[ "$1" == *:* ]]; then echo "$1"; else echo "127.0.0.1:$1"; fi; }

# start NAME COMMAND...: unless it runs already; its log is .data/run/NAME.log
start() {
  local name="$1"; shift
  if alive "$name"; then
    log "$name already running (pid $(pid_of "$name"))"
    return
  fi
  nohup "$@" >>"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
  log "started $name (pid $!, log .data/run/$name.log)"
}

# wait_for WHAT SECONDS COMMAND...: until the command succeeds
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what is not ready after ${secs}s; see .data/run/*.log"
      return 1
    fi
    sleep 0.2
  done
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

http_ok() {
  python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
}

leaf_up() {
  python3 -c 'import json,sys,urllib.request; sys.exit(0 if json.load(urllib.request.urlopen(sys.argv[1], timeout=2)).get("leafnodes",0) >= 1 else 1)' \
    "http://127.0.0.1:$edge_mon/leafz" 2>/dev/null
}

# Free for a server to listen on (servers set SO_REUSEADDR, so a connection
# of the past in TIME_WAIT does not count).
port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null
}

taken() {
  die "port $1 is taken by another process, so $2 cannot start; stop that process or choose another port: $3=<port> just up (docs/operations.md)"
}

# need_ports NAME VAR...: unless NAME runs already, the port of each variable
# must be free: a clear stop here, not a part that dies into its log.
need_ports() {
  local name="$1" v p; shift
  alive "$name" && return 0
  for v in "$@"; do
    p="${!v##*:}"
    port_free "$p" || taken "$p" "$name" "$v"
  done
}

# The servers' configs: the shipped ones (nats/) on this stack's ports.
nats_configs() {
  printf '%s\n' "# Written by scripts/stack.sh on every up: nats/hub.conf on this stack's ports." \
    'include "../../nats/hub.conf"' "listen: 127.0.0.1:$hub_port" "http: 127.0.0.1:$hub_mon" \
    >"$run/nats-hub.conf"
  printf '%s\n' "# Written by scripts/stack.sh on every up: nats/edge.conf on this stack's ports." \
    'include "../../nats/edge.conf"' "listen: 127.0.0.1:$edge_port" "http: 127.0.0.1:$edge_mon" \
    "leafnodes { listen: 127.0.0.1:$leaf_port }" >"$run/nats-edge.conf"
}

up() {
  eval "$(scripts/install-deps.sh)"
  mkdir -p "$run"
  load_ports
  save_ports
  local bin
  if [ -n "${SYSMON_BIN_DIR:-}" ]; then
    bin="$SYSMON_BIN_DIR"
    log "using the binaries in $bin (SYSMON_BIN_DIR; nothing built)"
  else
    log "building ($profile)"
    cargo build -q --profile "$profile" --bins
    bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
  fi
  local cli="$bin/sysmonstm"

  # Development credentials, made once: an operator of this machine's own,
  # a credential per service and one for the local agent.
  local creds="$data/creds"
  local machine
  machine="$("$bin/sysmonstm-agent" --once --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["machine_id"])')"
  if [ ! -f "$creds/operator.nk" ]; then
    "$cli" creds init "$creds" >/dev/null
    for s in persister alerter gateway notifier cli; do "$cli" creds service "$s" --dir "$creds" >/dev/null; done
    "$cli" creds agent "$machine" --dir "$creds" >/dev/null
    log "made development credentials in .data/creds (operator, services, agent-$machine)"
  fi
  local users="$creds/users"
  # Credentials made before the notifier existed: its own, and the CLI's
  # again (silences and notify tests are new rights).
  if [ ! -f "$users/notifier.creds" ]; then
    for s in notifier cli; do "$cli" creds service "$s" --dir "$creds" >/dev/null; done
  fi

  # METRICS in one stream, or split into partitions for a fleet
  # (SYSMON_METRICS_PARTITIONS; docs/operations.md, "Scaling"): the hub's account maps
  # subjects by it, and every service reading METRICS is told the same.
  local parts_had parts
  parts_had="$(cat "$creds/metrics-partitions" 2>/dev/null || echo 1)"
  parts="${SYSMON_METRICS_PARTITIONS:-$parts_had}"
  [[ "$parts" =~ ^[0-9]{1,2}$ ]] && [ "$parts" -ge 1 ] && [ "$parts" -le 16 ] \
    || die "SYSMON_METRICS_PARTITIONS=$parts: 1 to 16"
  if [ "$parts" != "$parts_had" ]; then
    "$cli" creds partitions "$parts" --dir "$creds" >/dev/null
    log "METRICS in $parts partition(s) (was $parts_had); a running hub needs 'just down' first"
  fi
  export SYSMON_METRICS_PARTITIONS="$parts" SYSMON_PERSISTER_METRICS_PARTITIONS="$parts" \
    SYSMON_ALERTER_METRICS_PARTITIONS="$parts" SYSMON_GATEWAY_METRICS_PARTITIONS="$parts"

  # The edge has an operator of its own (no hub credential works there, and
  # no edge credential at the hub): its authority, the stream admin's and
  # the edge gateway's credentials, and the hub's leaf link to it
  # (.data/creds/leaf-remote.conf, which nats/hub.conf includes), made again
  # if the edge's leaf port changed.
  local ecreds="$data/creds-edge"
  if [ ! -f "$ecreds/operator.nk" ]; then
    "$cli" creds init "$ecreds" --edge >/dev/null
    for s in edge-admin edge-gateway; do "$cli" creds service "$s" --dir "$ecreds" >/dev/null; done
    log "made the edge's development credentials in .data/creds-edge (operator, edge-admin, edge-gateway)"
  fi
  local leaf_url="nats-leaf://127.0.0.1:$leaf_port"
  if ! grep -qE "${leaf_url//./\\.}([^0-9]|\$)" "$creds/leaf-remote.conf" 2>/dev/null; then
    "$cli" creds leaf --dir "$ecreds" --hub-dir "$creds" --url "$leaf_url" >/dev/null
    log "made the hub's leaf link to the edge at $leaf_url (.data/creds/leaf-remote.conf)"
  fi

  # The edge first, so the hub's leaf link finds it at once.
  nats_configs
  need_ports nats-edge SYSMON_EDGE_PORT SYSMON_EDGE_MONITOR_PORT SYSMON_EDGE_LEAF_PORT
  start nats-edge "$NATS_SERVER_BIN" -c "$run/nats-edge.conf"
  wait_for "the edge" 20 http_ok "http://127.0.0.1:$edge_mon/healthz"
  need_ports nats-hub SYSMON_HUB_PORT SYSMON_HUB_MONITOR_PORT
  start nats-hub "$NATS_SERVER_BIN" -c "$run/nats-hub.conf"
  wait_for "the hub" 20 http_ok "http://127.0.0.1:$hub_mon/healthz"

  # PostgreSQL of its own under .data/pg: on SYSMON_PG_PORT if set, else on
  # the port it had, else on 5432 unless something else has it.
  local pgdir="$data/pg" port
  mkdir -p "$pgdir"
  if [ -n "${SYSMON_PG_PORT:-}" ]; then
    [[ "$SYSMON_PG_PORT" =~ ^[0-9]{1,5}$ ]] || die "SYSMON_PG_PORT=$SYSMON_PG_PORT is not a port"
    port="$SYSMON_PG_PORT"
  elif [ -f "$pgdir/port" ]; then
    port="$(cat "$pgdir/port")"
  else
    port=5432
    if ! port_free 5432; then
      port=55432
      while ! port_free "$port"; do port=$((port + 1)); done
      log "port 5432 is taken: PostgreSQL gets $port"
    fi
  fi
  local pg_pid
  pg_pid="$(head -n 1 "$pgdir/data/postmaster.pid" 2>/dev/null || true)"
  if [ -n "$pg_pid" ] && runs "$pg_pid"; then
    # Running: where it listens is its own word (line 4 of postmaster.pid).
    port="$(sed -n 4p "$pgdir/data/postmaster.pid")"
    log "PostgreSQL already running on $port"
  else
    port_free "$port" || taken "$port" PostgreSQL SYSMON_PG_PORT
    scripts/pg.sh start "$pgdir" "$port" >/dev/null
    log "started PostgreSQL on 127.0.0.1:$port (data in .data/pg)"
  fi
  echo "$port" >"$pgdir/port"
  local admin="postgres://postgres@127.0.0.1:$port/postgres"
  "$PG_BIN/psql" "$admin" -qtAc "SELECT 1 FROM pg_database WHERE datname='sysmon'" | grep -q 1 \
    || "$PG_BIN/psql" "$admin" -qc "CREATE DATABASE sysmon"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/sysmon"
  export NATS_URL="nats://127.0.0.1:$hub_port"
  export SYSMON_PERSISTER_METRICS_LISTEN="$persister_ops" SYSMON_ALERTER_METRICS_LISTEN="$alerter_ops" \
    SYSMON_NOTIFIER_METRICS_LISTEN="$notifier_ops"

  need_ports persister SYSMON_PERSISTER_METRICS_LISTEN
  NATS_CREDS="$users/persister.creds" start persister "$bin/sysmonstm-persister"
  wait_for "the persister" 60 http_ok "http://$persister_ops/health"
  need_ports alerter SYSMON_ALERTER_METRICS_LISTEN
  NATS_CREDS="$users/alerter.creds" start alerter "$bin/sysmonstm-alerter" --rules rules.example.toml
  wait_for "the alerter" 30 http_ok "http://$alerter_ops/health"
  # Channels and routes: config/notifier.toml (a log channel only, by default).
  need_ports notifier SYSMON_NOTIFIER_METRICS_LISTEN
  NATS_CREDS="$users/notifier.creds" start notifier "$bin/sysmonstm-notifier" --config config/notifier.toml
  wait_for "the notifier" 30 http_ok "http://$notifier_ops/health"
  # The edge's streams source the hub's, which the persister and the alerter
  # have made by now; made once the link is up (a source's request sent
  # while the link is down, or before its hub stream exists, is asked again
  # only after a wait of 30 s or more).
  wait_for "the hub's leaf link to the edge" 20 leaf_up
  NATS_URL="nats://127.0.0.1:$edge_port" NATS_CREDS="$ecreds/users/edge-admin.creds" \
    "$cli" edge setup >/dev/null
  log "edge streams METRICS, ALERTS, MACHINES source the hub (24 h window)"
  # The token the dashboard's rules editor (and curl) writes rules with.
  [ -s "$data/gateway.token" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$data/gateway.token")
  need_ports gateway SYSMON_DASHBOARD_PORT
  SYSMON_GATEWAY_API_TOKEN_FILE="$data/gateway.token" NATS_CREDS="$users/gateway.creds" \
    start gateway "$bin/sysmonstm-gateway" --listen "127.0.0.1:$web_port"
  wait_for "the gateway" 30 http_ok "http://127.0.0.1:$web_port/ready"
  NATS_CREDS="$users/agent-$machine.creds" start agent "$bin/sysmonstm-agent" \
    --machine "$machine" --state-dir "$data/agent"
  wait_for "the local agent's first snapshot" 15 http_ok "http://127.0.0.1:$web_port/api/machines/$machine/metrics"
  # The public, read-only dashboard: the gateway in edge mode, reading the
  # edge's streams with the edge gateway's credential; no PostgreSQL, no
  # token, no write route; /metrics only on its own port. An allow-list of
  # machines and public names goes in a config file (edge_machines;
  # docs/configuration.md).
  need_ports edge-gateway SYSMON_EDGE_DASHBOARD_PORT SYSMON_EDGE_METRICS_PORT
  NATS_URL="nats://127.0.0.1:$edge_port" NATS_CREDS="$ecreds/users/edge-gateway.creds" \
  SYSMON_GATEWAY_METRICS_LISTEN="127.0.0.1:$edge_metrics_port" \
    start edge-gateway "$bin/sysmonstm-gateway" --edge --listen "127.0.0.1:$edge_web_port"
  wait_for "the edge gateway" 30 http_ok "http://127.0.0.1:$edge_web_port/ready"
  wait_for "the local agent's snapshot at the edge" 30 http_ok "http://127.0.0.1:$edge_web_port/api/machines/$machine/metrics"

  local nats_url=""
  [ "$hub_port" = 4222 ] || nats_url="NATS_URL=$NATS_URL "
  cat <<EOF

sysmonstm is up.
  dashboard:  http://127.0.0.1:$web_port/
  edge dashboard (public, read-only): http://127.0.0.1:$edge_web_port/
  alerts:     ${nats_url}NATS_CREDS=$users/cli.creds $cli alerts watch --since 1h
  notifications: config/notifier.toml (log only: just logs notifier); silences:
              ${nats_url}NATS_CREDS=$users/cli.creds $cli silence add --machine '*' --for 1h
  this machine: $machine (credentials in .data/creds; add one: docs/operations.md)
  edge NATS:  nats://127.0.0.1:$edge_port (monitoring :$edge_mon, leaf link :$leaf_port; read with
              NATS_CREDS=$ecreds/users/edge-gateway.creds)
  PostgreSQL: $DATABASE_URL
  status:     just status     logs: just logs [part]     stop: just down
EOF
}

down() {
  local i name p
  for ((i = ${#parts[@]} - 1; i >= 0; i--)); do
    name="${parts[$i]}"
    p="$(pid_of "$name")"
    if [ -n "$p" ] && kill "$p" 2>/dev/null; then
      for _ in $(seq 100); do runs "$p" || break; sleep 0.1; done
      if runs "$p"; then kill -9 "$p" 2>/dev/null || true; fi
      log "stopped $name"
    fi
    rm -f "$run/$name.pid"
  done
  if [ -f "$data/pg/data/postmaster.pid" ]; then
    eval "$(scripts/install-deps.sh 2>/dev/null)"
    scripts/pg.sh stop "$data/pg" && log "stopped PostgreSQL"
  fi
}

status() {
  load_ports
  local name
  for name in "${parts[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; fi
  done
  if [ -f "$data/pg/data/postmaster.pid" ]; then
    echo "postgresql: running on 127.0.0.1:$(cat "$data/pg/port" 2>/dev/null)"
  else
    echo "postgresql: stopped"
  fi
  echo "ports: hub $hub_port (monitoring $hub_mon), edge $edge_port (monitoring $edge_mon, leaf $leaf_port)," \
    "dashboard $web_port, persister $persister_ops, alerter $alerter_ops (.data/ports)"
}

logs() {
  if [ -n "${1:-}" ]; then
    tail -n 100 "$run/$1.log"
  else
    for f in "$run"/*.log; do echo "== $(basename "$f" .log)"; tail -n 20 "$f"; done
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) logs "${2:-}" ;;
  *) echo "usage: scripts/stack.sh up|down|status|logs [part]" >&2; exit 2 ;;
esac
