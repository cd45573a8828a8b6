# Starts a throwaway PostgreSQL cluster (Debian's packages, installed by
# 00-apt.sh) for the session store's PostgreSQL tests and exports
# AIRLOCK_TEST_PG_URL. The cluster lives in "$AIRLOCK_TEST_RUN_DIR/postgres",
# listens on a free 127.0.0.1 port, trusts local connections, and is stopped
# by a cleanup step. Root cannot run postgres, so as root the cluster runs as
# the `postgres` user created by the Debian package.
# Sourced by scripts/test-all (set -euo pipefail); safe to source again.

airlock_pg_setup() {
  local pg_bin="" d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && pg_bin="$d"
  done
  if [ -z "$pg_bin" ]; then
    echo "20-postgres: no PostgreSQL server binaries under /usr/lib/postgresql (is the postgresql package installed?)" >&2
    return 1
  fi
  local pg_dir="$AIRLOCK_TEST_RUN_DIR/postgres"
  local run=()
  mkdir -p "$pg_dir"
  if [ "$(id -u)" = 0 ]; then
    # the postgres user must be able to reach its directory
    chmod a+x "$AIRLOCK_TEST_RUN_DIR"
    chown postgres: "$pg_dir"
    run=(runuser -u postgres --)
  fi
  if [ -f "$pg_dir/port" ] && "${run[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
    export AIRLOCK_TEST_PG_URL="postgresql://airlock@127.0.0.1:$(cat "$pg_dir/port")/postgres"
    echo "20-postgres: reusing the cluster at $AIRLOCK_TEST_PG_URL"
    return 0
  fi
  if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
    "${run[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U airlock --auth=trust -E UTF8 --locale=C.UTF-8 >"$pg_dir/initdb.log" 2>&1 || {
      cat "$pg_dir/initdb.log" >&2
      return 1
    }
  fi
  "${run[@]}" mkdir -p "$pg_dir/sock"
  # A free loopback port: bind port 0 and read what the kernel chose. A race
  # with another process taking it before postgres does is retried below.
  local port attempt
  for attempt in 1 2 3 4 5; do
    if command -v python3 >/dev/null; then
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    else
      port=$((20000 + RANDOM % 30000))
    fi
    if "${run[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 120 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pg_dir/sock -c max_connections=400 -c fsync=on -c synchronous_commit=on" \
      start >/dev/null; then
      break
    fi
    port=""
    tail -n 20 "$pg_dir/server.log" >&2 || true
  done
  if [ -z "$port" ]; then
    echo "20-postgres: PostgreSQL did not start (log: $pg_dir/server.log)" >&2
    return 1
  fi
  echo "$port" >"$pg_dir/port"
  cleanup_steps+=("(cd / && ${run[*]} $pg_bin/pg_ctl -D $pg_dir/data -m fast -w stop >/dev/null); rm -rf $pg_dir")
  export AIRLOCK_TEST_PG_URL="postgresql://airlock@127.0.0.1:$port/postgres"
  echo "20-postgres: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') at $AIRLOCK_TEST_PG_URL"
}
airlock_pg_setup
