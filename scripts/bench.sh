#!/usr/bin/env bash
# Load benchmark of POST /api/users/{id}/usage (wrk, 64 connections) on SQLite and on Postgres,
# over 1,000 users and on one hot user, next to GET /livez (no database: the HTTP ceiling of
# this machine) measured in the same run. Afterwards `tokenmeter audit` checks that every
# counter equals the sum of its events and that counters == 7 × events (each request adds 7).
#
#   scripts/bench.sh                 # both databases; DURATION=15s CONNECTIONS=64 by default
#   scripts/bench.sh sqlite          # one of them
#   SERVE_LOG=tokenmeter_server=debug scripts/bench.sh sqlite   # with the server's step timings
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
USERS=1000
bin=target/release/tokenmeter
what=${1:-all}

[ -x "$bin" ] && [ -z "${REBUILD:-}" ] || cargo build --release -p tokenmeter --bin tokenmeter

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One wrk run of usage reports, then the CPU each kind of thread spent per request
# (scripts/bench/cpu.py: the HTTP workers, SQLite's writer thread, Postgres's processes).
usage_run() {
  local pid=$1 base=$2 users=$3 prefix=$4 key=$5 out
  out=$(mktemp -d)
  python3 scripts/bench/cpu.py snapshot "$pid" > "$out/before.json"
  python3 scripts/bench/cpu.py run "$out/wrk.cpu" -- \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s scripts/bench/usage.lua "$base" -- "$users" "$prefix" "$key" > "$out/wrk.txt"
  python3 scripts/bench/cpu.py snapshot "$pid" > "$out/after.json"
  grep -E 'Requests/sec|Latency|99%|requests in|Non-2xx|Socket errors' "$out/wrk.txt"
  python3 scripts/bench/cpu.py per-request "$out/before.json" "$out/after.json" \
    "$(awk '/requests in/ {print $1}' "$out/wrk.txt")" "$out/wrk.cpu"
  rm -rf "$out"
}

suite() {
  local label=$1 url=$2
  local port; port=$(free_port)
  local base="http://127.0.0.1:$port"
  # Start from zero as a script would: an admin key to create users, and a backend key with
  # usage:record that sends the reports (each request is authenticated).
  RUST_LOG=warn "$bin" create-admin --database-url "$url" --user-id bench-admin >/dev/null
  local admin_key recorder_key
  admin_key=$(RUST_LOG=warn "$bin" create-api-key --database-url "$url" --user-id bench-admin --name bench 2>/dev/null)
  recorder_key=$(RUST_LOG=warn "$bin" create-api-key --database-url "$url" --user-id bench-admin --name recorder --scope usage:record 2>/dev/null)
  RUST_LOG=${SERVE_LOG:-warn} DATABASE_URL=$url LEPTOS_SITE_ADDR=127.0.0.1:$port "$bin" serve &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" RETURN
  for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
  seq 0 $((USERS - 1)) | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "$base/api/users" \
    -H "Authorization: Bearer $admin_key" -H 'Content-Type: application/json' -d '{"userId":"u{}","tokenLimit":1000000000000,"password":"bench-password"}'

  echo "## $label"
  echo "### GET /livez (no database)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$base/livez" | grep -E 'Requests/sec|Latency|99%|Non-2xx'
  echo "### POST usage, $USERS users"
  usage_run "$pid" "$base" "$USERS" spread "$recorder_key"
  echo "### POST usage, one hot user"
  usage_run "$pid" "$base" 1 hot "$recorder_key"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "### exactness"
  "$bin" audit --database-url "$url" | tee /tmp/tokenmeter-audit.txt
  # Every request added 7 tokens: the counters must be exactly 7 × the number of events.
  read -r events counters < <(awk '/^users:/ {print $4, $12}' /tmp/tokenmeter-audit.txt)
  if [ "$counters" -eq $((7 * events)) ]; then echo "counters == 7 x events ($events events)"; else echo "NOT EXACT"; exit 1; fi
  echo
}

if [ "$what" = all ] || [ "$what" = sqlite ]; then
  dir=$(mktemp -d)
  suite "SQLite (WAL, synchronous=FULL)" "sqlite:$dir/bench.db"
  rm -rf "$dir"
fi
if [ "$what" = all ] || [ "$what" = postgres ]; then
  scripts/with-postgres.sh bash -c "$(declare -f free_port usage_run suite); bin=$bin; THREADS=$THREADS; CONNECTIONS=$CONNECTIONS; DURATION=$DURATION; USERS=$USERS; set -euo pipefail; suite 'Postgres 15 (fsync on, synchronous_commit on)' \"\$TOKENMETER_TEST_PG\""
fi
