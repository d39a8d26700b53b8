#!/usr/bin/env bash
# The HTTP floor of this machine (see docs/PERFORMANCE.md, "The floor"): a minimal axum server
# under the same wrk load as scripts/bench.sh's usage runs, with no database at all.
#   scripts/bench/floor.sh                 # DURATION=8s CONNECTIONS=64
# Prints req/s, p99 and the server's and wrk's CPU per request for: GET /livez; the usage POST
# answered at once; through a writer thread doing no work; and with 12 µs of writer work a report.
set -euo pipefail
cd "$(dirname "$0")/floor"
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
cp ../../../Cargo.lock . 2>/dev/null || true
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run() { # label, writer µs (or ""), path-or-script
  local label=$1 writer=$2 what=$3 pid
  if [ -n "$writer" ]; then WRITER_US=$writer ADDR=127.0.0.1:$port target/release/http-floor & else ADDR=127.0.0.1:$port target/release/http-floor & fi
  pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/livez" >/dev/null && break; sleep 0.1; done
  local before; before=$(awk '{print $14+$15}' "/proc/$pid/stat")
  if [ "$what" = livez ]; then
    /usr/bin/time -f "%U %S" -o wrk.time wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port/livez" > wrk.txt
  else
    /usr/bin/time -f "%U %S" -o wrk.time wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s ../usage.lua "http://127.0.0.1:$port" -- 1000 floor unused > wrk.txt
  fi
  local after; after=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$label" "$before" "$after" <<'PY'
import os, re, sys
label, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = open("wrk.txt").read()
n = int(re.search(r"(\d+) requests in", out).group(1))
rate = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
p99 = re.search(r"99%\s+(\S+)", out).group(1)
hz = os.sysconf("SC_CLK_TCK")
wrk = sum(float(x) for x in open("wrk.time").read().split()[-2:])
print(f"{label:<44} {float(rate):>10,.0f} req/s  p99 {p99:>7}  server {(after-before)/hz/n*1e6:5.1f} µs/req  wrk {wrk/n*1e6:5.1f} µs/req")
PY
}
run "GET /livez" "" livez
run "usage POST, answered at once" "" usage
run "usage POST, through a writer thread" 0 usage
run "usage POST, writer spends 12 µs a report" 12 usage
rm -f wrk.txt wrk.time
