#!/usr/bin/env bash
# Runs a command with a throw-away Postgres server: initdb in a temp dir, listening on a free
# loopback port, stopped and deleted when the command ends. The command sees its address in
# TOKENMETER_TEST_PG (a superuser URL; tests create their own databases in it).
#
#   scripts/with-postgres.sh cargo test -p server
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "Postgres is not installed: run scripts/setup.sh" >&2; exit 1; }

dir=$(mktemp -d /tmp/tokenmeter-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

# initdb refuses to run as root: run the server as the postgres user then.
run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir"

cleanup() {
  run_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

run_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
run_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
  "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null

export TOKENMETER_TEST_PG="postgres://postgres@127.0.0.1:$port/postgres"
echo "[with-postgres] Postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
"$@"
