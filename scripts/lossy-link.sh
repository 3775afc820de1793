#!/bin/bash
# Small webhooks over a lossy link: the relay (and the peers' servers, when installed)
# on this machine, the client and the target in a network namespace of their own,
# joined by a veth pair that drops LOSS of every 1,000 packets each way (nftables).
# For each path, interleaved over ROUNDS: wrk at c=1 with the bench's 4 KiB JSON POST
# (p50, p99 and how many requests completed, which shows stalls longer than the p99);
# the same while a download through the same tunnel is read at RATE (curl's
# --limit-rate, default 20M: a fast uplink); then a download at full speed. Last, time
# to URL over the lossy link: TTU_SAMPLES (default 20) starts of a second client, each
# from spawn to the first 200 through the relay.
#   sudo scripts/lossy-link.sh [LOSS_PER_1000 (default 5)] [SECS (default 4)]
# Needs root, ip (iproute2), nft (nftables), wrk and curl; BIN (default target/release)
# holds porthole, porthole-relay and porthole-bench (`cargo build --release --workspace
# --all-targets` or `cargo build --release -p porthole-bench` builds the last).
# rathole (tcp and noise transports) is measured when it is on PATH.
set -eu
LOSS=${1:-5}
SECS=${2:-4}
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-20M}
TTU_SAMPLES=${TTU_SAMPLES:-20}
BIN=$(cd "${BIN:-target/release}" && pwd)
for tool in ip nft wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "lossy-link: $tool is not installed" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "lossy-link: needs root (network namespace, nftables)" >&2; exit 2; }

NS=porthole-lossy-$$
VA=phl$$a
VB=phl$$b
NET=10.$((200 + $$ % 50)).$(($$ % 250))
D=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del "$VA" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
IN() { ip netns exec "$NS" "$@"; }
# For background processes: exec, so that $! is the program itself (ip netns exec execs
# it in turn) and cleanup's kill reaches it; the namespace going away does not.
IN_BG() { exec ip netns exec "$NS" "$@"; }

ip netns add "$NS"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VB" netns "$NS"
ip addr add "$NET.1/30" dev "$VA"
ip link set "$VA" up
IN ip addr add "$NET.2/30" dev "$VB"
IN ip link set "$VB" up
IN ip link set lo up
IN nft -f - <<NFT
table inet lossy {
  chain in { type filter hook input priority 0; iifname "$VB" numgen random mod 1000 < $LOSS drop; }
  chain out { type filter hook output priority 0; oifname "$VB" numgen random mod 1000 < $LOSS drop; }
}
NFT

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
free_port() { python3 -c "import socket,sys;s=socket.socket();s.bind((sys.argv[1],0));print(s.getsockname()[1])" "$1"; }

IN_BG "$BIN/porthole-bench" target-server --addr 127.0.0.1:0 --threads 1 >"$D/target.out" 2>&1 &
PIDS+=($!)
wait_for "$D/target.out" 127.0.0.1 10
TARGET=$(grep -o '127.0.0.1:[0-9]*' "$D/target.out" | head -1)

"$BIN/porthole-relay" serve --json --domain localhost --http-addr 127.0.0.1:0 \
  --tunnel-addr "$NET.1:0" --admin-addr off --data-dir "$D" >"$D/relay.out" 2>"$D/relay.err" &
PIDS+=($!)
wait_for "$D/relay.out" listening 10
TOKEN=$("$BIN/porthole-relay" token add lossy --data-dir "$D" 2>/dev/null | tail -1)
RELAY_HTTP=$(field http "$D/relay.out")
RELAY_TUNNEL=$(field tunnel "$D/relay.out")
RELAY_PIN=$(field pin "$D/relay.out")
# start_client NAME [TARGET]: a client in the namespace (run it with &).
start_client() {
  IN_BG env PORTHOLE_TOKEN="$TOKEN" PORTHOLE_DATA_DIR="$D" "$BIN/porthole" http ${2:+"$2"} \
    --name "$1" --relay "$RELAY_TUNNEL" --relay-pin "$RELAY_PIN" --inspect off --json --quiet
}
start_client lossy "$TARGET" >"$D/client.out" 2>"$D/client.err" &
PIDS+=($!)
wait_for "$D/client.out" ready 10
PATHS=("porthole $RELAY_HTTP lossy.localhost")

if command -v rathole >/dev/null; then
  KEYS=$(rathole --genkey)
  PRIV=$(echo "$KEYS" | sed -n '/Private Key/{n;p}')
  PUB=$(echo "$KEYS" | sed -n '/Public Key/{n;p}')
  for transport in tcp noise; do
    CTRL=$(free_port "$NET.1")
    PUBLIC=$(free_port 127.0.0.1)
    {
      printf '[server]\nbind_addr = "%s:%s"\n' "$NET.1" "$CTRL"
      [ $transport = noise ] && printf '[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "%s"\n' "$PRIV"
      printf '[server.services.t]\ntoken = "lossy"\nbind_addr = "127.0.0.1:%s"\n' "$PUBLIC"
    } >"$D/rathole-$transport-server.toml"
    {
      printf '[client]\nremote_addr = "%s:%s"\n' "$NET.1" "$CTRL"
      [ $transport = noise ] && printf '[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "%s"\n' "$PUB"
      printf '[client.services.t]\ntoken = "lossy"\nlocal_addr = "%s"\n' "$TARGET"
    } >"$D/rathole-$transport-client.toml"
    rathole --server "$D/rathole-$transport-server.toml" >"$D/rathole-$transport-server.log" 2>&1 &
    PIDS+=($!)
    sleep 0.2
    IN_BG rathole --client "$D/rathole-$transport-client.toml" >"$D/rathole-$transport-client.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null -m 2 "http://127.0.0.1:$PUBLIC/" && break; sleep 0.1; done
    PATHS+=("rathole-$transport 127.0.0.1:$PUBLIC lossy.localhost")
  done
fi

BODY=$(python3 -c "print('x' * 4000)")
cat >"$D/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"type": "payment_intent.succeeded", "data": "$BODY"}]]
LUA

echo "loss: $LOSS of 1000 packets each way between relay and client; c=1 for ${SECS}s; $ROUNDS rounds"
printf '%-14s %5s %9s %9s %8s | %-25s | %s\n' path round p50 p99 requests \
  "p99, requests: download at $RATE" "download MB/s"
c1() {
  local out
  out=$(wrk --latency -t1 -c1 -d"${SECS}s" -H "Host: $2" -s "$D/post.lua" "http://$1/")
  echo "$(echo "$out" | awk '$1=="50%"{print $2}') $(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(echo "$out" | awk '/requests in/{print $1}')"
}
for round in $(seq "$ROUNDS"); do
  for p in "${PATHS[@]}"; do
    read -r name addr host <<<"$p"
    read -r p50 p99 n <<<"$(c1 "$addr" "$host")"
    curl -s -o /dev/null -H "Host: $host" --limit-rate "$RATE" -m $((SECS + 2)) \
      "http://$addr/download/1073741824" &
    DL=$!
    sleep 0.5
    read -r _ lp99 ln <<<"$(c1 "$addr" "$host")"
    wait $DL || true
    mbps=$(curl -s -o /dev/null -H "Host: $host" -m "$SECS" -w '%{speed_download}' \
      "http://$addr/download/1073741824" || true)
    printf '%-14s %5s %9s %9s %8s | %9s %15s | %.0f\n' "$name" "$round" "$p50" "$p99" "$n" \
      "$lp99" "$ln" "$(python3 -c "print(${mbps:-0}/1e6)")"
  done
done

# Time to URL: spawn a client in the namespace, poll its URL until it answers 200, stop
# it, and wait until its name answers 404 again before the next start.
status() { curl -s -o /dev/null -m 1 -w '%{http_code}' -H "Host: lossy-ttu.localhost" "http://$RELAY_HTTP/" || true; }
samples=()
for _ in $(seq "$TTU_SAMPLES"); do
  t0=$(date +%s%N)
  start_client lossy-ttu >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 3000); do [ "$(status)" = 200 ] && break; sleep 0.002; done
  samples+=($(( ($(date +%s%N) - t0) / 1000000 )))
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 500); do [ "$(status)" = 404 ] && break; sleep 0.01; done
done
python3 - "${samples[@]}" <<'PY'
import statistics, sys
ms = sorted(int(x) for x in sys.argv[1:])
print(f"time to URL over the lossy link, {len(ms)} starts: median {statistics.median(ms):.0f} ms, "
      f"p90 {ms[int(len(ms) * 0.9)]} ms, max {ms[-1]} ms, mean {statistics.mean(ms):.0f} ms")
PY
