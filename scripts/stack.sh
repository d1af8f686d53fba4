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
# files and logs). A second `up` while the stack runs changes nothing and
# restarts only a part that died.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
data="$root/.data"
run="$data/run"
profile="${SYSMON_PROFILE:-release}"
parts=(nats-edge nats-hub persister alerter notifier gateway agent)

log() { echo "stack: $*" >&2; }

pid_of() { cat "$run/$1.pid" 2>/dev/null || true; }
alive() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

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
  python3 -c 'import json,sys,urllib.request; sys.exit(0 if json.load(urllib.request.urlopen("http://127.0.0.1:8223/leafz", timeout=2)).get("leafnodes",0) >= 1 else 1)' 2>/dev/null
}

port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null
}

up() {
  eval "$(scripts/install-deps.sh)"
  mkdir -p "$run"
  log "building ($profile)"
  cargo build -q --profile "$profile" --bins
  local bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
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

  # The edge has an operator of its own (no hub credential works there, and
  # no edge credential at the hub): its authority, the stream admin's and
  # the edge gateway's credentials, and the hub's leaf link to it
  # (.data/creds/leaf-remote.conf, which nats/hub.conf includes).
  local ecreds="$data/creds-edge"
  if [ ! -f "$ecreds/operator.nk" ]; then
    "$cli" creds init "$ecreds" --edge >/dev/null
    for s in edge-admin edge-gateway; do "$cli" creds service "$s" --dir "$ecreds" >/dev/null; done
    log "made the edge's development credentials in .data/creds-edge (operator, edge-admin, edge-gateway)"
  fi
  if [ ! -f "$creds/leaf-remote.conf" ]; then
    "$cli" creds leaf --dir "$ecreds" --hub-dir "$creds" >/dev/null
    log "made the hub's leaf link to the edge (.data/creds/leaf-remote.conf)"
  fi

  # The edge first, so the hub's leaf link finds it at once.
  start nats-edge "$NATS_SERVER_BIN" -c nats/edge.conf
  wait_for "the edge" 20 http_ok http://127.0.0.1:8223/healthz
  start nats-hub "$NATS_SERVER_BIN" -c nats/hub.conf
  wait_for "the hub" 20 http_ok http://127.0.0.1:8222/healthz

  # PostgreSQL of its own under .data/pg, on 5432 unless something else has it.
  local pgdir="$data/pg" port
  mkdir -p "$pgdir"
  if [ -f "$pgdir/port" ]; then
    port="$(cat "$pgdir/port")"
  else
    port=5432
    if ! port_free 5432; then
      port=55432
      while ! port_free "$port"; do port=$((port + 1)); done
      log "port 5432 is taken: PostgreSQL gets $port"
    fi
    echo "$port" >"$pgdir/port"
  fi
  if [ -f "$pgdir/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" status -D "$pgdir/data" >/dev/null 2>&1; then
    log "PostgreSQL already running on $port"
  else
    scripts/pg.sh start "$pgdir" "$port" >/dev/null
    log "started PostgreSQL on 127.0.0.1:$port (data in .data/pg)"
  fi
  local admin="postgres://postgres@127.0.0.1:$port/postgres"
  "$PG_BIN/psql" "$admin" -qtAc "SELECT 1 FROM pg_database WHERE datname='sysmon'" | grep -q 1 \
    || "$PG_BIN/psql" "$admin" -qc "CREATE DATABASE sysmon"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/sysmon"
  export NATS_URL="nats://127.0.0.1:4222"

  NATS_CREDS="$users/persister.creds" start persister "$bin/sysmonstm-persister"
  wait_for "the persister" 60 http_ok http://127.0.0.1:9102/health
  NATS_CREDS="$users/alerter.creds" start alerter "$bin/sysmonstm-alerter" --rules rules.example.toml
  wait_for "the alerter" 30 http_ok http://127.0.0.1:9103/health
  # Channels and routes: config/notifier.toml (a log channel only, by default).
  NATS_CREDS="$users/notifier.creds" start notifier "$bin/sysmonstm-notifier" --config config/notifier.toml
  wait_for "the notifier" 30 http_ok http://127.0.0.1:9104/health
  # The edge's streams source the hub's, which the persister and the alerter
  # have made by now; made once the link is up (a source's request sent
  # while the link is down, or before its hub stream exists, is asked again
  # only after a wait of 30 s or more).
  wait_for "the hub's leaf link to the edge" 20 leaf_up
  NATS_URL="nats://127.0.0.1:4223" NATS_CREDS="$ecreds/users/edge-admin.creds" \
    "$cli" edge setup >/dev/null
  log "edge streams METRICS, ALERTS, MACHINES source the hub (24 h window)"
  # (The edge gateway, on 127.0.0.1:8081 with $ecreds/users/edge-gateway.creds,
  # starts here once it exists.)
  # The token the dashboard's rules editor (and curl) writes rules with.
  [ -s "$data/gateway.token" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$data/gateway.token")
  SYSMON_GATEWAY_API_TOKEN_FILE="$data/gateway.token" NATS_CREDS="$users/gateway.creds" \
    start gateway "$bin/sysmonstm-gateway" --listen 127.0.0.1:8080
  wait_for "the gateway" 30 http_ok http://127.0.0.1:8080/ready
  NATS_CREDS="$users/agent-$machine.creds" start agent "$bin/sysmonstm-agent" \
    --machine "$machine" --state-dir "$data/agent"
  wait_for "the local agent's first snapshot" 15 http_ok "http://127.0.0.1:8080/api/machines/$machine/metrics"

  cat <<EOF

sysmonstm is up.
  dashboard:  http://127.0.0.1:8080/
  alerts:     NATS_CREDS=$users/cli.creds $cli alerts watch --since 1h
  notifications: config/notifier.toml (log only: just logs notifier); silences:
              NATS_CREDS=$users/cli.creds $cli silence add --machine '*' --for 1h
  this machine: $machine (credentials in .data/creds; add one: docs/operations.md)
  edge NATS:  nats://127.0.0.1:4223 (monitoring :8223, leaf link :7422; read with
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
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$p" 2>/dev/null; then kill -9 "$p" 2>/dev/null || true; fi
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
  local name
  for name in "${parts[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; fi
  done
  if [ -f "$data/pg/data/postmaster.pid" ]; then
    echo "postgresql: running on 127.0.0.1:$(cat "$data/pg/port" 2>/dev/null)"
  else
    echo "postgresql: stopped"
  fi
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
