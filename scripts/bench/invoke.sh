#!/usr/bin/env bash
# Load benchmark of model calls through POST /api/invoke with the offline demo model (paced at 0
# ms per token, so what is measured is tokenmeter's own work per call: count the prompt, reserve,
# call, settle — two write transactions), over 1,000 users, on SQLite or Postgres. Afterwards
# `tokenmeter audit` checks the ledger against the counters and that no reservation is left.
#
#   scripts/bench/invoke.sh [sqlite|postgres]     # DURATION=15s CONNECTIONS=64 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
USERS=1000
bin=target/release/tokenmeter
[ -x "$bin" ] && [ -z "${REBUILD:-}" ] || cargo build --release -p tokenmeter --bin tokenmeter

run() {
  local url=$1
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local base="http://127.0.0.1:$port"
  RUST_LOG=warn "$bin" create-admin --database-url "$url" --user-id bench-admin >/dev/null
  local key; key=$(RUST_LOG=warn "$bin" create-api-key --database-url "$url" --user-id bench-admin --name bench 2>/dev/null)
  RUST_LOG=warn TOKENMETER_DEMO_TOKEN_DELAY_MS=0 DATABASE_URL=$url LEPTOS_SITE_ADDR=127.0.0.1:$port "$bin" serve &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" RETURN EXIT
  for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
  seq 0 $((USERS - 1)) | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "$base/api/users" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"userId":"u{}","tokenLimit":1000000000000,"password":"bench-password"}'
  local threads=$(( CONNECTIONS < 2 ? 1 : 2 ))
  wrk -t"$threads" -c"$CONNECTIONS" -d"$DURATION" --latency -s scripts/bench/invoke.lua "$base" -- "$USERS" "$key" \
    | grep -E 'Requests/sec|Latency|50%|99%|requests in|Non-2xx|Socket errors'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$bin" audit --database-url "$url"
}

case "${1:-sqlite}" in
  sqlite) dir=$(mktemp -d); run "sqlite:$dir/bench.db"; rm -rf "$dir" ;;
  postgres) scripts/with-postgres.sh bash -c "$(declare -f run); bin=$bin; USERS=$USERS; CONNECTIONS=$CONNECTIONS; DURATION=$DURATION; set -euo pipefail; run \"\$TOKENMETER_TEST_PG\"" ;;
esac
