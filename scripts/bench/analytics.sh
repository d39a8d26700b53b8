#!/usr/bin/env bash
# Usage analytics at scale (issue 6): 10 million ledger events over 1,000 users and one year,
# then: a full backfill of the year (it takes over the aggregator's backlog and builds every
# rollup from the ledger) with its verification, the same backfill again (nothing to write),
# a user's 30-day daily stats through the API under load (wrk), a CSV export of every event of
# 37 days, the TokenUsageModal's time to show data in Chromium (when the release site is built:
# the server binary and the site must come from the same `cargo leptos build --release`, as
# `make test` makes them; a binary from plain `cargo build` serves a page that does not hydrate),
# and the aggregator's lag while reports are recorded.
#
#   scripts/bench/analytics.sh [sqlite|postgres]      # EVENTS=10000000 USERS=1000 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
EVENTS=${EVENTS:-10000000}
USERS=${USERS:-1000}
DURATION=${DURATION:-15s}
bin=target/release/tokenmeter
if [ ! -x "$bin" ] || [ -n "${REBUILD:-}" ]; then
  if command -v cargo-leptos >/dev/null && [ -x end2end/node_modules/.bin/wasm-opt ]; then
    # The server and the site from one build (wasm-opt from npm), so the modal step can run.
    PATH="$PWD/end2end/node_modules/.bin:$PATH" cargo leptos build --release
  else
    cargo build --release -p tokenmeter --bin tokenmeter
  fi
fi

run() {
  local url=$1
  local t0 t1
  echo "== bench data: $EVENTS events, $USERS users, 365 days"
  RUST_LOG=warn "$bin" bench-data --database-url "$url" --users "$USERS" --events "$EVENTS" --days 365
  local from to
  from=$(date -u -d '365 days ago' +%F); to=$(date -u -d 'yesterday' +%F)
  echo "== backfill $from..$to (takes over the aggregator's backlog, builds every rollup, verifies)"
  t0=$(date +%s.%N)
  RUST_LOG=warn "$bin" backfill --database-url "$url" --from "$from" --to "$to" 2>&1 | tr '\r' '\n' | grep -v '^\[' || true
  t1=$(date +%s.%N); echo "backfill command total: $(echo "$t1 - $t0" | bc) s"
  echo "== backfill again (idempotent: compares with the ledger, writes nothing, verifies)"
  t0=$(date +%s.%N)
  RUST_LOG=warn "$bin" backfill --database-url "$url" --from "$from" --to "$to" 2>&1 | tr '\r' '\n' | grep -v '^\[' || true
  t1=$(date +%s.%N); echo "second backfill total: $(echo "$t1 - $t0" | bc) s"

  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local base="http://127.0.0.1:$port"
  local password; password=$(RUST_LOG=warn "$bin" create-admin --database-url "$url" --user-id bench-admin | sed -n 's/^password: //p')
  local key; key=$(RUST_LOG=warn "$bin" create-api-key --database-url "$url" --user-id bench-admin --name bench 2>/dev/null)
  RUST_LOG=warn DATABASE_URL=$url LEPTOS_SITE_ADDR=127.0.0.1:$port LEPTOS_SITE_ROOT=target/site "$bin" serve &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" RETURN EXIT
  for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
  echo "== GET /api/usage/stats (a random user's last 30 days by day), 8 connections"
  wrk -t2 -c8 -d"$DURATION" --latency -s scripts/bench/stats.lua "$base" -- "$USERS" "$key" \
    | grep -E 'Requests/sec|Latency|50%|90%|95%|99%|requests in|Non-2xx|Socket errors'
  echo "== CSV export of every event of the last 37 days (all users)"
  local efrom; efrom=$(date -u -d '37 days ago' +%F)
  curl -s -o /tmp/tokenmeter-events.csv -w 'HTTP %{http_code}, %{size_download} bytes in %{time_total} s\n' \
    -H "Authorization: Bearer $key" "$base/api/usage/events.csv?userId=*&from=$efrom&to=$to"
  echo "rows (without the header): $(($(wc -l < /tmp/tokenmeter-events.csv) - 1))"
  rm -f /tmp/tokenmeter-events.csv
  if [ -d target/site/pkg ] && [ -d end2end/node_modules/@playwright ]; then
    echo "== TokenUsageModal in Chromium: from the click on \"View usage\" to cards and chart drawn"
    node scripts/bench/modal.mjs "$base" bench-admin "$password" "$USERS" 10 2>&1 | tail -1 \
      || echo "TokenUsageModal: failed (is the site from the same build as $bin?)"
  else
    echo "== TokenUsageModal: skipped (needs the release site and end2end's packages: make test builds both)"
  fi
  echo "== aggregator lag while ingesting: POST usage reports (32 connections, $DURATION) while"
  echo "   GET /api/usage/aggregator is polled every 0.5 s (lag = age of the oldest unaggregated event)"
  ( while sleep 0.5; do
      curl -sf -H "Authorization: Bearer $key" "$base/api/usage/aggregator" || true; echo
    done ) > /tmp/tokenmeter-lag.jsonl &
  local poller=$!
  wrk -t2 -c32 -d"$DURATION" --latency -s scripts/bench/usage.lua "$base" -- "$USERS" "lag-$$" "$key" \
    | grep -E 'Requests/sec|requests in|Non-2xx|Socket errors|99%'
  kill "$poller"; wait "$poller" 2>/dev/null || true
  python3 - <<'PY'
import json
rows = [json.loads(l) for l in open("/tmp/tokenmeter-lag.jsonl") if l.strip().startswith("{")]
lags = sorted(r["lagMs"] for r in rows)
print(f"polls: {len(rows)}, lag max {lags[-1]} ms, p50 {lags[len(lags)//2]} ms, "
      f"pending max {max(r['pendingEvents'] for r in rows)} events")
PY
  rm -f /tmp/tokenmeter-lag.jsonl
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$bin" audit --database-url "$url" | tail -1
}

case "${1:-sqlite}" in
  sqlite) dir=$(mktemp -d); run "sqlite:$dir/bench.db"; ls -la "$dir"; rm -rf "$dir" ;;
  postgres) scripts/with-postgres.sh bash -c "$(declare -f run); bin=$bin; USERS=$USERS; EVENTS=$EVENTS; DURATION=$DURATION; set -euo pipefail; run \"\$TOKENMETER_TEST_PG\"" ;;
esac
