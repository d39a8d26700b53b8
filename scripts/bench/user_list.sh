#!/usr/bin/env bash
# How fast the admin's user list answers with 10,000 users: one page (25 rows) of the list,
# sorted by usage and filtered, through the same server function the Users page calls.
#
#   scripts/bench/user_list.sh          # DURATION=10s CONNECTIONS=8 USERS=10000 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
USERS=${USERS:-10000}
bin=target/release/tokenmeter
[ -x "$bin" ] || cargo build --release -p tokenmeter --bin tokenmeter

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
url="sqlite:$dir/list.db"
RUST_LOG=warn "$bin" create-admin --database-url "$url" --user-id bench-admin >/dev/null
key=$(RUST_LOG=warn "$bin" create-api-key --database-url "$url" --user-id bench-admin 2>/dev/null)
# Users straight into the table (creating 10,000 through the API would time argon2, not the list).
python3 - "$dir/list.db" "$USERS" <<'PY'
import random, sqlite3, sys
db, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
con = sqlite3.connect(db)
rows = []
for i in range(n):
    limit = random.randint(10_000, 10_000_000)
    used = random.randint(0, limit)
    at = 1_790_000_000_000_000 + i
    rows.append((f"user{i:05d}", f"Person {i}", limit, used, used, at, at, at))
con.executemany(
    "INSERT INTO account (account_id, display_name, token_limit, tokens_used, lifetime_tokens, "
    "period_started_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)", rows)
con.commit()
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn DATABASE_URL=$url LEPTOS_SITE_ADDR=127.0.0.1:$port "$bin" serve &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

body='query[sort]=usage&query[direction]=desc&query[filter]=9&query[page]=3&query[pageSize]=25'
echo "one answer:"
curl -sf -X POST "http://127.0.0.1:$port/rpc/list_users_page" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/x-www-form-urlencoded' --data "$body" | head -c 300; echo
cat > "$dir/list.lua" <<LUA
wrk.method = "POST"
wrk.body = "$body"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $key"
LUA
echo "### POST /rpc/list_users_page, $USERS users, sort by usage, filter, page 3 of 25"
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$dir/list.lua" "http://127.0.0.1:$port/rpc/list_users_page" \
  | grep -E 'Requests/sec|Latency|50%|90%|99%|Non-2xx'
