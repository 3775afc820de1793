#!/usr/bin/env bash
# The code and data an exchange touches, per process, for Porthole and (when `rathole` is
# on PATH) rathole with its noise transport: instructions, and misses in a 32 KiB level-1
# instruction and data cache, per 4 KiB POST through the tunnel, from valgrind's cache
# simulation (docs/internals.md, "What a c=1 exchange costs").
#
# At one request at a time the tunnel's processes, the load generator and the target take
# turns on one core and each comes back to caches the others have filled, so a c=1
# exchange costs mostly what its code and data take to come back: these counts follow
# that cost, and unlike a latency they do not move with the machine's noise.
#
# Each tunnel runs twice under cachegrind, serving WARM and then WARM+N requests (N=400
# unless given); the difference, divided by N, leaves out starting, connecting and
# stopping. Needs valgrind, curl and python3 (Debian: valgrind curl python3); takes a
# couple of minutes after the release build.
#
#   scripts/footprint.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-400}
WARM=100
for tool in valgrind curl python3; do
    command -v "$tool" >/dev/null || { echo "footprint.sh: $tool is not installed" >&2; exit 1; }
done

cargo build --release --locked -p relay-server -p tunnel-client -p porthole-bench
BIN=target/release
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
scratch

# Runs COMMAND... in place of this (background) shell under cachegrind, its counts in
# $WORK/NAME.out. The level-1 caches are those of the x86-64 cores Porthole is measured on.
run_counted() {
    local name=$1
    shift
    exec valgrind --tool=cachegrind --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 \
        --LL=8388608,16,64 --cachegrind-out-file="$WORK/$name.out" "$@"
}

webhook_body "$WORK/body.json"

# N keep-alive POSTs of the webhook to URL with Host HOST, each answered 2xx.
posts() { post_hooks "$1" "$2" "$3" "$WORK/body.json" --fail; }

# A free loopback TCP port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The benchmark's target (a minimal hyper server answering 200 with a short body), so
# that an exchange here is the benchmark's. It is not counted.
"$BIN/porthole-bench" target-server --threads 1 >"$WORK/target.out" &
PIDS+=($!)
wait_for "$WORK/target.out" listening 60
TARGET=$(sed -n 's/^listening //p' "$WORK/target.out")

# Porthole: a relay and a client with the inspector off, as the benchmark runs them.
porthole_run() {
    local n=$1 dir=$WORK/porthole-$1
    mkdir -p "$dir"
    local token
    token=$("$BIN/porthole-relay" token add bench --data-dir "$dir" 2>/dev/null | tail -1)
    run_counted "porthole-$n-relay" "$BIN/porthole-relay" serve --json --data-dir "$dir" \
        --domain localhost --http-addr 127.0.0.1:0 --tunnel-addr 127.0.0.1:0 \
        --admin-addr off >"$dir/relay.out" 2>"$dir/relay.err" &
    local relay=$!
    PIDS+=("$relay")
    wait_for "$dir/relay.out" listening 120
    PORTHOLE_DATA_DIR=$dir/client run_counted "porthole-$n-client" "$BIN/porthole" http \
        "$TARGET" --relay "$(field tunnel "$dir/relay.out")" \
        --relay-pin "$(field pin "$dir/relay.out")" --token "$token" --name bench \
        --inspect off --quiet --json >"$dir/client.out" 2>&1 &
    local client=$!
    PIDS+=("$client")
    wait_for "$dir/client.out" '"url"' 120
    posts "http://$(field http "$dir/relay.out")" bench.localhost "$n"
    stop_within 60 "$client"
    stop_within 60 "$relay"
}

# rathole with the noise transport: a server and a client, a key made for the run.
rathole_run() {
    local n=$1 dir=$WORK/rathole-$1
    mkdir -p "$dir"
    local keys private public ctrl port
    keys=$(rathole --genkey)
    private=$(echo "$keys" | sed -n '/Private Key/{n;p}' | tr -d '[:space:]')
    public=$(echo "$keys" | sed -n '/Public Key/{n;p}' | tr -d '[:space:]')
    ctrl=$(free_port)
    port=$(free_port)
    printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "%s"\n[server.services.bench]\ntoken = "footprint"\nbind_addr = "127.0.0.1:%s"\n' \
        "$ctrl" "$private" "$port" >"$dir/server.toml"
    printf '[client]\nremote_addr = "127.0.0.1:%s"\n[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "%s"\n[client.services.bench]\ntoken = "footprint"\nlocal_addr = "%s"\n' \
        "$ctrl" "$public" "$TARGET" >"$dir/client.toml"
    RUST_LOG=warn run_counted "rathole-$n-relay" rathole -s "$dir/server.toml" >"$dir/server.log" 2>&1 &
    local server=$!
    PIDS+=("$server")
    RUST_LOG=warn run_counted "rathole-$n-client" rathole -c "$dir/client.toml" >"$dir/client.log" 2>&1 &
    local client=$!
    PIDS+=("$client")
    # rathole prints no ready line: the first request that goes through says it is up.
    for _ in $(seq 600); do
        curl -s -o /dev/null --fail "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    posts "http://127.0.0.1:$port" "127.0.0.1:$port" "$n"
    stop_within 60 "$client"
    stop_within 60 "$server"
}

paths=(porthole)
if command -v rathole >/dev/null; then paths+=(rathole); else
    echo "footprint.sh: rathole is not on PATH (cargo install rathole): Porthole only" >&2
fi
for path in "${paths[@]}"; do
    "${path}_run" "$WARM"
    "${path}_run" $((WARM + N))
done

python3 - "$WORK" "$WARM" "$N" "${paths[@]}" <<'EOF'
import sys
work, warm, n, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def counts(name):
    events = summary = None
    for line in open(f"{work}/{name}.out"):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            summary = [int(x) for x in line.split()[1:]]
    return dict(zip(events, summary))

label = {"porthole": ("porthole", "relay", "client"), "rathole": ("rathole-noise", "server", "client")}
print(f"per 4 KiB POST, the difference of {warm} and {warm + n} requests:")
print(f"{'path':<14} {'process':<8} {'instructions':>12} {'I1 misses':>10} {'D1 misses':>10}")
for path in paths:
    name, *procs = label[path]
    for proc, role in zip(procs, ("relay", "client")):
        a, b = counts(f"{path}-{warm}-{role}"), counts(f"{path}-{warm + n}-{role}")
        per = lambda *ev: sum(b[e] - a[e] for e in ev) / n
        print(f"{name:<14} {proc:<8} {per('Ir'):>12,.0f} {per('I1mr'):>10,.0f} "
              f"{per('D1mr', 'D1mw'):>10,.0f}")
EOF
