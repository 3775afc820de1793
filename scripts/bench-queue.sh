#!/usr/bin/env bash
# Queue-mode throughput beside passthrough, in one run (shared/PERFORMANCE.md style):
# a release relay with its data dir on the real disk (fsync on: synchronous=FULL), two
# clients with the built-in target (one --delivery queue, one passthrough), and a
# reserved name whose client is offline (store only). wrk at c=64 with a 4 KiB JSON
# POST, rounds interleaved (P Q O P Q O …), medians printed. Everything on loopback.
#
#   bash scripts/bench-queue.sh [ROUNDS] [SECONDS]
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -p relay-server -p tunnel-client --bins >&2
BIN="$TARGET_DIR/release"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/porthole-qbench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_line() { # FILE PATTERN: wait (10 s at most) for a line matching PATTERN
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for $2 in $1" >&2; cat "$1" >&2; exit 1
}

"$BIN/porthole-relay" serve --json --http-addr 127.0.0.1:0 --tunnel-addr 127.0.0.1:0 \
  --admin-addr off --data-dir "$WORK/relay" --queue-max-count 10000000 \
  --queue-max-bytes 100000000000 >"$WORK/relay.out" 2>"$WORK/relay.err" &
PIDS+=($!); RELAY_PID=$!
wait_line "$WORK/relay.out" listening
read -r HTTP TUNNEL PIN < <(python3 -c 'import json,sys; e=json.loads(open(sys.argv[1]).readline()); print(e["http"], e["tunnel"], e["pin"])' "$WORK/relay.out")
TOKEN=$("$BIN/porthole-relay" token add bench --data-dir "$WORK/relay" 2>/dev/null | tail -1)

client() { # NAME OUTFILE EXTRA...
  local name=$1 out=$2; shift 2
  PORTHOLE_TOKEN=$TOKEN PORTHOLE_DATA_DIR="$WORK/client-$name" "$BIN/porthole" http \
    --relay "$TUNNEL" --relay-pin "$PIN" --name "$name" --inspect off --json --quiet "$@" >"$out" 2>&1 &
  PIDS+=($!)
  wait_line "$out" '"ready"'
}
client pbench "$WORK/p.out"
client qbench "$WORK/q.out" --delivery queue
client obench "$WORK/o.out"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true   # obench: reserved, offline

python3 - "$WORK/post.lua" <<'PY'
import json, sys
body = json.dumps({"type": "payment_intent.succeeded", "data": "x" * 4000})[:4096]
open(sys.argv[1], "w").write(
    'wrk.method = "POST"\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
    'wrk.body = ' + json.dumps(body) + '\n')
PY

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # NAME → prints req/s and relay CPU µs per request
  local before after rps
  before=$(cpu "$RELAY_PID")
  wrk -t2 -c64 -d"${SECS}s" -H "Host: $1.localhost" -s "$WORK/post.lua" "http://$HTTP/hook" >"$WORK/wrk.out"
  if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.out"; then
    echo "warning ($1): $(grep -E 'Non-2xx|Socket errors' "$WORK/wrk.out" | tr -s ' ')" >&2
  fi
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
  after=$(cpu "$RELAY_PID")
  local ticks; ticks=$(getconf CLK_TCK)
  python3 -c 'import sys; r, b, a, t, s = float(sys.argv[1]), *map(int, sys.argv[2:6]); print(f"{r:.0f} {(a - b) * 1e6 / t / max(r * s, 1):.0f}")' \
    "$rps" "$before" "$after" "$ticks" "$SECS"
}

declare -A RPS CPU
for r in $(seq 1 "$ROUNDS"); do
  for path in pbench qbench obench; do
    read -r rps us < <(run "$path")
    RPS[$path]+="$rps "; CPU[$path]+="$us "
    echo "round $r  $path  $rps req/s  relay CPU ${us} µs/req" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "c=64, 4 KiB JSON POST, ${ROUNDS} interleaved rounds of ${SECS}s, medians (fsync on: WAL, synchronous=FULL)"
printf '%-34s %10s %16s\n' path "req/s" "relay CPU µs/req"
printf '%-34s %10s %16s\n' "passthrough (app answers)" "$(echo "${RPS[pbench]}" | median)" "$(echo "${CPU[pbench]}" | median)"
printf '%-34s %10s %16s\n' "queue, client online (delivering)" "$(echo "${RPS[qbench]}" | median)" "$(echo "${CPU[qbench]}" | median)"
printf '%-34s %10s %16s\n' "queue, client offline (store only)" "$(echo "${RPS[obench]}" | median)" "$(echo "${CPU[obench]}" | median)"
echo "queue file: $(du -sh "$WORK/relay/queue.sqlite3" | cut -f1); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
