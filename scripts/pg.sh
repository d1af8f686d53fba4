#!/usr/bin/env bash
# A PostgreSQL server in a directory of its own, for tests and for `just up`.
#   scripts/pg.sh start DIR [PORT]  initdb if needed, start, print the admin URL
#   scripts/pg.sh stop DIR          stop it (fast)
# Without PORT it picks one: PostgreSQL cannot choose its own, and a port
# found free can be taken before the server binds it, so it takes a random
# port below the kernel's ephemeral range (which no bind to port 0 and no
# outgoing connection ever gets) and tries another if the bind still fails.
# PostgreSQL refuses to run as root, so as root its programs run as the
# `postgres` user. Needs PG_BIN (scripts/install-deps.sh prints it).
set -euo pipefail
cmd="${1:?usage: pg.sh start DIR [PORT] | stop DIR}"
dir="${2:?directory}"
: "${PG_BIN:?PG_BIN is not set; eval \"\$(scripts/install-deps.sh)\" first}"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$cmd" in
  start)
    port="${3:-}"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$PG_BIN/initdb" -U postgres --auth=trust -E UTF8 --no-sync -D "$dir/data" >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    base="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=300"
    if [ "${SYSMON_PG_FAST:-0}" = 1 ]; then
      base="$base -c fsync=off -c synchronous_commit=off"
    else
      # Durable, with the WAL settings timescaledb-tune gives a metrics
      # database (its Promscale profile): with the default max_wal_size (1GB)
      # a steady 50 k snapshots/s forced a checkpoint every ~10 s, and each
      # stalled the commits for a second or two (`just bench ingest`).
      base="$base -c max_wal_size=4GB -c min_wal_size=2GB -c wal_buffers=16MB -c checkpoint_timeout=15min"
    fi
    if [ "${SYSMON_TIMESCALEDB:-0}" = 1 ]; then base="$base -c shared_preload_libraries=timescaledb"; fi
    # More server settings, e.g. "-c max_wal_size=4GB".
    base="$base ${SYSMON_PG_OPTS:-}"
    ephemeral="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    for attempt in $(seq 20); do
      p="${port:-$(shuf -i "10000-$((ephemeral - 1))" -n 1)}"
      from="$(stat -c %s "$dir/server.log" 2>/dev/null || echo 0)"
      if as_pg "$PG_BIN/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/server.log" -o "-p $p $base" >/dev/null; then
        port="$p"
        break
      fi
      if [ -z "$port" ] && tail -c "+$((from + 1))" "$dir/server.log" | grep -q "Address already in use"; then
        echo "pg.sh: port $p was taken; trying another" >&2
        continue
      fi
      tail -c "+$((from + 1))" "$dir/server.log" >&2
      exit 1
    done
    [ -n "$port" ] || { echo "pg.sh: 20 ports were taken" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" stop -m fast -w -D "$dir/data" >/dev/null || true
    fi
    ;;
  *) echo "usage: pg.sh start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
