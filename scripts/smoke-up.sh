#!/usr/bin/env bash
# `just test`: the quick start works as the README promises. From a clean
# copy of this repository (its tracked and new files, not .data/, target/ or
# node_modules/) in a temporary directory:
#   1. `just up` brings the stack up; the dashboard answers, and so does the
#      edge (its nats-server, its streams sourcing the hub's);
#   2. the local agent's snapshot is in the API within 10 s, with plausible
#      numbers (CPU within 0–100 %, this machine's memory);
#   3. `sysmonstm alerts watch --since 1h --json` shows a rule set here firing
#      (stopped after that: it follows for ever);
#   4. a second `just up` changes nothing (same pids); with the gateway
#      killed, `just up` starts the gateway again and nothing else;
#   5. `just down` leaves no process of ours: every pid it started is gone,
#      and no process runs in the copy or names it on its command line;
#   6. `just up` again finds the first run's data (history rows, the stored
#      alert, the rule), and `just down` stops it all again.
# Ports: free ones picked here (SYSMON_*_PORT, docs/operations.md), so it
# runs beside a stack on the default ports and beside other tests.
# SYSMON_BIN_DIR: binaries built already (`just test` passes its own), so
# nothing is built again; without it `just up` builds in the copy (with
# CARGO_TARGET_DIR if set).
set -euo pipefail
cd "$(dirname "$0")/.."
src="$PWD"
eval "$(scripts/install-deps.sh)"

say() { echo "smoke-up: $*" >&2; }
# `just` as .ci/run installs it, if it is not on PATH already.
command -v just >/dev/null 2>&1 || PATH="${SYSMON_TOOLS:-$HOME/.cache/sysmonstm/tools}/venv/bin:$PATH"
command -v just >/dev/null 2>&1 || { say "just is not installed (.ci/run installs it)"; exit 1; }
fail() {
  say "FAILED: $*"
  if [ -d "${copy:-}/.data/run" ]; then
    for f in "$copy"/.data/run/*.log; do echo "== $(basename "$f") (last lines)" >&2; tail -n 15 "$f" >&2; done
  fi
  exit 1
}

copy="$(mktemp -d -t sysmonstm-smoke-XXXXXX)"
# PostgreSQL runs as `postgres` when we are root: it must reach .data/pg.
chmod 755 "$copy"
started=() # name=pid of everything a `just up` started, also what stopped since
cleanup() {
  local p
  [ -z "${holder:-}" ] || kill "$holder" 2>/dev/null || true
  [ -z "${watcher:-}" ] || kill "$watcher" 2>/dev/null || true
  if [ -d "$copy/.data/run" ]; then (cd "$copy" && timeout 120 just down >/dev/null 2>&1) || true; fi
  for p in "${started[@]}"; do runs "${p#*=}" && kill -9 "${p#*=}" 2>/dev/null; done
  rm -rf "$copy" "$copy".*.out "$copy".*.err
}
trap cleanup EXIT
# Stopped from outside (a timeout, ^C): clean up all the same.
trap 'exit 130' INT TERM

git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar -c --null -T - -f - | tar -x -C "$copy"
say "copy of $src in $copy"

# Ports nobody listens on, below the kernel's ephemeral range (which no bind
# to port 0 and no outgoing connection takes), all different.
read -r -a ports < <(python3 - <<'EOF'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
lo, hi = (20000, low) if low > 21000 else (10000, 65536)
picked = []
while len(picked) < 12:
    p = random.randrange(lo, hi)
    if p in picked:
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
        picked.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*picked)
EOF
)
export SYSMON_HUB_PORT="${ports[0]}" SYSMON_HUB_MONITOR_PORT="${ports[1]}" SYSMON_EDGE_PORT="${ports[2]}" \
  SYSMON_EDGE_MONITOR_PORT="${ports[3]}" SYSMON_EDGE_LEAF_PORT="${ports[4]}" SYSMON_DASHBOARD_PORT="${ports[5]}" \
  SYSMON_EDGE_DASHBOARD_PORT="${ports[6]}" SYSMON_PG_PORT="${ports[7]}" \
  SYSMON_PERSISTER_METRICS_LISTEN="127.0.0.1:${ports[8]}" SYSMON_ALERTER_METRICS_LISTEN="127.0.0.1:${ports[9]}" \
  SYSMON_EDGE_METRICS_PORT="${ports[10]}" SYSMON_NOTIFIER_METRICS_LISTEN="127.0.0.1:${ports[11]}"
web="http://127.0.0.1:$SYSMON_DASHBOARD_PORT"
edge_mon="http://127.0.0.1:$SYSMON_EDGE_MONITOR_PORT"
edge_web="http://127.0.0.1:$SYSMON_EDGE_DASHBOARD_PORT"

# just_in_copy NAME ARGS...: `just ARGS` in the copy, bounded; its output in
# $copy.NAME.out.
just_in_copy() {
  local name="$1"; shift
  if ! (cd "$copy" && timeout 600 just "$@") >"$copy.$name.out" 2>&1; then
    cat "$copy.$name.out" >&2
    fail "just $* ($name)"
  fi
}
pids_of_stack() {
  local f
  for f in "$copy"/.data/run/*.pid; do echo "$(basename "$f" .pid)=$(cat "$f")"; done
  [ -f "$copy/.data/pg/data/postmaster.pid" ] && echo "postgresql=$(head -n 1 "$copy/.data/pg/data/postmaster.pid")"
}
remember_pids() {
  local kv
  while read -r kv; do
    [[ " ${started[*]} " == *" $kv "* ]] || started+=("$kv")
  done < <(pids_of_stack)
}
# runs PID: a process that runs (a zombie waiting for its reaper does not).
runs() {
  local st
  st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
  [ -n "$st" ] && [ "$st" != Z ]
}
gone() { ! runs "$1"; }
# none_left WHEN: every process `just up` started is gone (given a few
# seconds to finish exiting), and none runs in the copy or names it.
none_left() {
  local kv deadline=$((SECONDS + 10)) left
  for kv in "${started[@]}"; do
    while runs "${kv#*=}"; do
      [ "$SECONDS" -lt "$deadline" ] || fail "${kv%%=*} (pid ${kv#*=}), started by just up, still runs $1: $(tr '\0' ' ' </proc/"${kv#*=}"/cmdline)"
      sleep 0.1
    done
  done
  left="$(ours)"
  [ -z "$left" ] || fail "processes of the copy still run $1:
$left"
}
# json URL PYTHON-EXPR: the expression over the answer `j`, printed (exit 1
# if the request fails or the expression is falsy).
json() {
  python3 -c '
import json, sys, urllib.request
j = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
v = eval(sys.argv[2])
print(v if not isinstance(v, (dict, list)) else json.dumps(v))
sys.exit(0 if v else 1)' "$1" "$2" 2>/dev/null
}
# until_ok SECONDS WHAT COMMAND...: the command succeeds within the time.
until_ok() {
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (not within ${secs}s)"
    sleep 0.2
  done
}
ours() { # processes that run in the copy or name it
  local d p
  for d in /proc/[0-9]*; do
    p="${d#/proc/}"
    { [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || ! runs "$p"; } && continue
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF "$copy" \
      || [[ "$(readlink "$d/cwd" 2>/dev/null)" == "$copy"* ]]; then
      echo "$p: $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-120)"
    fi
  done
}

http_ok() { python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null; }

# 0. A port that another process holds stops `up` at once, saying which
# and how to choose another (the edge starts first: nothing has started).
python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); print("listening", flush=True); time.sleep(60)' \
  "$SYSMON_EDGE_PORT" >"$copy.holder.out" &
holder=$!
until_ok 10 "a listener holds port $SYSMON_EDGE_PORT" grep -q . "$copy.holder.out"
(cd "$copy" && timeout 120 just up) >"$copy.taken.out" 2>&1 && fail "just up ran with its port taken"
kill "$holder"
wait "$holder" 2>/dev/null || true
holder=""
grep -q "port $SYSMON_EDGE_PORT is taken by another process, so nats-edge cannot start.*SYSMON_EDGE_PORT=" "$copy.taken.out" \
  || fail "just up with its port taken did not say so: $(cat "$copy.taken.out")"
[ -z "$(ls "$copy"/.data/run/*.pid 2>/dev/null)" ] || fail "just up with its port taken started something"
say "a port taken: $(grep -o 'port [0-9]* is taken[^;]*' "$copy.taken.out")"

# 1. Up, and both dashboards answer.
first_ms=$(($(date +%s) * 1000))
just_in_copy up up
say "just up: ${SECONDS}s after the start"
remember_pids
grep -q "sysmonstm is up" "$copy.up.out" || fail "just up did not say it is up"
python3 -c 'import sys,urllib.request; b=urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(); sys.exit(0 if "<html" in b.lower() and "app.js" in b else 1)' "$web/" \
  || fail "the dashboard at $web/ is not the dashboard"
json "$edge_mon/healthz" 'j.get("status") == "ok"' >/dev/null || fail "the edge nats-server is not healthy"
# The edge's copy of METRICS fills from the hub across the leaf link.
until_ok 30 "the edge's METRICS stream holds the hub's snapshots" \
  json "$edge_mon/jsz?streams=true" '[s["state"]["messages"] for a in j.get("account_details", []) for s in a.get("stream_detail", []) if s["name"] == "METRICS" and s["state"]["messages"] > 0]'
# The edge gateway: the same dashboard, read-only, and no write route.
python3 -c 'import sys,urllib.request; b=urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(); sys.exit(0 if "<html" in b.lower() and "app.js" in b else 1)' "$edge_web/" \
  || fail "the edge dashboard at $edge_web/ is not the dashboard"
json "$edge_web/api/mode" 'j.get("read_only") is True' >/dev/null || fail "the edge dashboard is not read-only"
code="$(python3 -c '
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"{}", method="PUT")
try:
    urllib.request.urlopen(req, timeout=5); print(200)
except urllib.error.HTTPError as e:
    print(e.code)' "$edge_web/api/rules/x")"
[ "$code" = 405 ] || fail "a rule write at the edge got $code, not 405"
say "dashboard $web, the edge ($edge_mon) and the edge dashboard $edge_web answer"

# 2. The local agent's snapshot is in the API within 10 s of `up` starting
# it, and it is this machine's.
machine="$(sed -n 's/^  this machine: \([a-z0-9_-]*\).*/\1/p' "$copy.up.out")"
[ -n "$machine" ] || fail "just up named no machine"
json "$web/api/machines" '[m for m in j["machines"] if m["machine_id"] == "'"$machine"'"]' >/dev/null \
  || fail "$machine is not in $web/api/machines"
agent_started="$(stat -c %Y "$copy/.data/run/agent.pid")"
# (The agent's first sample has no CPU figure yet: it needs two readings.)
until_ok $((agent_started + 10 - $(date +%s))) "a snapshot of $machine with its CPU in the API 10 s after the agent started" \
  json "$web/api/machines/$machine/metrics" 'j["timestamp_ms"] / 1000 >= '"$agent_started"' and j["cpu"] is not None'
snap="$(json "$web/api/machines/$machine/metrics" 'j')"
mem_total=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) * 1024))
python3 - "$snap" "$mem_total" <<'EOF' || fail "the snapshot's numbers are not plausible: $snap"
import json, sys
s, mem = json.loads(sys.argv[1]), int(sys.argv[2])
assert 0 <= s["cpu"] <= 100, s["cpu"]
assert 0 < s["memory"] <= 100, s["memory"]
assert s["memory_total_bytes"] == mem, (s["memory_total_bytes"], mem)
EOF
say "snapshot of $machine in the API: cpu $(json "$web/api/machines/$machine/metrics" 'round(j["cpu"], 1)') %"
# With SYSMON_METRICS_PARTITIONS=N the hub holds METRICS_0 … METRICS_<N-1>
# and no single METRICS, and the snapshot above came through them.
parts="${SYSMON_METRICS_PARTITIONS:-1}"
streams="$(find "$copy/.data/hub" -path '*/streams/METRICS*' -prune -type d -printf '%f\n' | sort | tr '\n' ' ')"
if [ "$parts" -gt 1 ]; then
  want="$(for p in $(seq 0 $((parts - 1))); do echo "METRICS_$p"; done | sort | tr '\n' ' ')"
else
  want="METRICS "
fi
[ "$streams" = "$want" ] || fail "the hub's METRICS streams are '$streams', not '$want' (SYSMON_METRICS_PARTITIONS=$parts)"
say "METRICS in $parts stream(s): $streams"

# 3. The alerts CLI, as `just up` prints it, shows a rule that fires at once.
bin="${SYSMON_BIN_DIR:-${CARGO_TARGET_DIR:-$copy/target}/${SYSMON_PROFILE:-release}}"
cli() { NATS_URL="nats://127.0.0.1:$SYSMON_HUB_PORT" NATS_CREDS="$copy/.data/creds/users/cli.creds" "$bin/sysmonstm" "$@"; }
cli rules set 'name="smoke_up" metric="processes" op=">=" threshold=1 severity="info"' >/dev/null \
  || fail "sysmonstm rules set"
watch="$copy.watch.out"
# Not through `cli`: a backgrounded function is a subshell, and killing it
# left the `sysmonstm` it ran following for ever (seen after a CI run).
NATS_URL="nats://127.0.0.1:$SYSMON_HUB_PORT" NATS_CREDS="$copy/.data/creds/users/cli.creds" \
  "$bin/sysmonstm" alerts watch --since 1h --json >"$watch" 2>"$copy.watch.err" &
watcher=$!
until_ok 30 "alerts watch shows smoke_up firing" \
  python3 -c 'import json,sys; sys.exit(0 if any(e.get("rule") == "smoke_up" and e.get("state") == "firing" for e in map(json.loads, open(sys.argv[1]))) else 1)' "$watch"
kill -0 "$watcher" 2>/dev/null || fail "alerts watch exited: $(cat "$copy.watch.err")"
kill "$watcher"
wait "$watcher" 2>/dev/null || true
gone "$watcher" || fail "alerts watch (pid $watcher) is still running after it was stopped"
watcher=
say "alerts watch --since 1h --json: $(grep -c . "$watch") event(s), smoke_up firing"

# 4. A second `up` changes nothing; one after the gateway died restarts it.
before="$(pids_of_stack)"
just_in_copy up2 up
[ "$(pids_of_stack)" = "$before" ] || fail "a second just up changed the stack: $before -> $(pids_of_stack)"
grep -q "started" "$copy.up2.out" && fail "a second just up started something: $(grep started "$copy.up2.out")"
gw="$(cat "$copy/.data/run/gateway.pid")"
kill -9 "$gw"
until_ok 10 "the gateway is gone" gone "$gw"
just_in_copy up3 up
remember_pids
[ "$(grep -c "^stack: started" "$copy.up3.out")" = 1 ] && grep -q "started gateway" "$copy.up3.out" \
  || fail "just up after the gateway died did not start it (alone): $(cat "$copy.up3.out")"
[ "$(pids_of_stack | grep -v '^gateway=')" = "$(echo "$before" | grep -v '^gateway=')" ] \
  || fail "just up after the gateway died restarted more than the gateway"
http_ok "$web/ready" || fail "the restarted gateway does not answer"
say "second just up: nothing changed; after the gateway was killed: the gateway alone started again"

# The first run's data, before it stops: stored history and the alert.
until_ok 30 "the persister stored $machine's snapshots" json "$web/api/machines/$machine/history?metric=cpu" 'j["points"] >= 1'
until_ok 30 "the persister stored the smoke_up alert" json "$web/api/alerts?machine=$machine" '[a for a in j["alerts"] if a["rule"] == "smoke_up"]'
stopped_ms=$(($(date +%s) * 1000))

# 5. Down leaves nothing of ours running.
just_in_copy down down
none_left "after just down"
say "just down: the ${#started[@]} processes it started are gone, none runs in $copy"

# 6. Up again: the first run's data is there.
just_in_copy up4 up
remember_pids
json "$web/api/machines/$machine/history?metric=cpu&from=$((first_ms - 60000))&to=$stopped_ms" 'j["points"] >= 1' >/dev/null \
  || fail "the history of the first run is gone"
json "$web/api/alerts?machine=$machine" '[a for a in j["alerts"] if a["rule"] == "smoke_up"]' >/dev/null \
  || fail "the stored smoke_up alert is gone"
json "$web/api/rules" '"smoke_up" in json.dumps(j)' >/dev/null || fail "the smoke_up rule is gone"
say "just up again: the first run's history, alert and rule are there"
just_in_copy down2 down
none_left "after the second just down"
say "passed in ${SECONDS}s"
