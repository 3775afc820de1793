#!/usr/bin/env bash
# Regenerates the link order of the release binaries: tunnel-client/link-order.txt and
# relay-server/link-order.txt, read by scripts/release-link.rs, the build script of both
# (docs/internals.md, "Code layout").
#
# Each binary runs its everyday work under valgrind's callgrind: start, connect, HTTP
# requests through the tunnel, idle, stop. The functions it executed, grouped by the
# runs that used them and hottest first within a group, become the order file; the linker puts them at the start of .text, together, so the
# code a running process touches fills few pages instead of being spread over all of
# them. Run it after a toolchain or dependency update (symbol names carry a hash that
# changes with them; stale names are skipped, silently, and the layout degrades back to
# the linker's default) or after large code changes.
#
# Needs valgrind, curl and python3 (Debian: valgrind curl python3). Takes a few minutes
# after the release build.
#
#   scripts/link-order.sh --check   how many listed names the release binaries still have
#                                   (exits 1 below 90%: time to regenerate)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --check ]; then
    cargo build --release --locked -p relay-server -p tunnel-client
    python3 - <<'EOF'
import subprocess, sys
stale = False
for binary, order in [("porthole-relay", "relay-server"), ("porthole", "tunnel-client")]:
    nm = subprocess.run(["nm", f"target/release/{binary}"], capture_output=True, text=True,
                        check=True).stdout
    have = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3}
    names = open(f"{order}/link-order.txt").read().split()
    found = sum(n in have for n in names)
    print(f"{binary}: {found} of {len(names)} listed functions ({100 * found / len(names):.0f}%)")
    stale |= found < 0.9 * len(names)
sys.exit(1 if stale else 0)
EOF
    exit
fi

for tool in valgrind curl python3; do
    command -v "$tool" >/dev/null || { echo "link-order.sh: $tool is not installed" >&2; exit 1; }
done

cargo build --release --locked -p relay-server -p tunnel-client
BIN=target/release
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
scratch
# Valgrind runs code about 50 times slower: every wait below allows 120 s.

# Runs COMMAND... in place of this (background) shell, so that $! is its own pid, which
# stop_within signals: under callgrind with its profile named NAME, or as it is when NAME is
# `plain`.
run_as() {
    local name=$1
    shift
    if [ "$name" = plain ]; then exec "$@"; fi
    exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$name.cg" "$@"
}

webhook_body "$WORK/body.json"

# Sends keep-alive requests to HOST at URL (POSTs of the body, then GETs).
requests() {
    local url=$1 host=$2 n=$3
    shift 3
    post_hooks "$url" "$host" "$n" "$WORK/body.json" "$@"
    curl -sS "$@" -H "Host: $host" "$url/" "$url/status?x=1" >/dev/null
}

# A local HTTP/1.1 target (keep-alive) that answers 200 with a short JSON body.
cat >"$WORK/target.py" <<'EOF'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
EOF
python3 "$WORK/target.py" >"$WORK/target.port" &
PIDS+=($!)
wait_for "$WORK/target.port" '[0-9]' 120
TARGET=127.0.0.1:$(cat "$WORK/target.port")

# A relay with the serve options after $1, run as $1 (see run_as).
start_relay() {
    local dir=$WORK/relay-$1
    mkdir -p "$dir"
    # As an operator does (and the benchmark): the token and the relay's certificate
    # exist before `serve` starts, so first-start work is not in the everyday list; the
    # domain is given (clap parses each flag's type with code of its own).
    RELAY_TOKEN=$("$BIN/porthole-relay" token add "$1" --data-dir "$dir" 2>/dev/null | tail -1)
    "$BIN/porthole-relay" fingerprint --data-dir "$dir" >/dev/null
    local cmd=("$BIN/porthole-relay" serve --json --data-dir "$dir" --domain localhost
        --http-addr 127.0.0.1:0 --tunnel-addr 127.0.0.1:0 "${@:2}")
    run_as "$1" "${cmd[@]}" >"$dir/out" 2>"$dir/err" &
    PIDS+=($!)
    RELAY_PID=$!
    wait_for "$dir/out" listening 120
    RELAY_HTTP=$(field http "$dir/out")
    RELAY_HTTPS=$(field https "$dir/out")
    RELAY_TUNNEL=$(field tunnel "$dir/out")
    RELAY_PIN=$(field pin "$dir/out")
}

# A client of the current relay named $1, run as $1 (see run_as).
start_client() {
    local name=$1
    shift
    local cmd=("$BIN/porthole" http "$@" --relay "$RELAY_TUNNEL" --relay-pin "$RELAY_PIN"
        --token "$RELAY_TOKEN" --name "$name" --json)
    PORTHOLE_DATA_DIR=$WORK/c-$name run_as "$name" "${cmd[@]}" >"$WORK/$name.out" 2>&1 &
    PIDS+=($!)
    CLIENT_PID=$!
    wait_for "$WORK/$name.out" '"url"' 120
}

# Ends the current phase of profiled process PID (see run_as): callgrind writes what ran
# since the last dump to NAME.cg.1, NAME.cg.2, …; what runs after the last dump
# (stopping) goes to NAME.cg as the process exits.
phase() {
    callgrind_control -d "$1" >/dev/null 2>&1
}


echo "link-order.sh: profiling porthole-relay (HTTP; then HTTPS with HTTP/1.1 and h2, admin)…"
HOST=plain.localhost
start_relay relay-http --admin-addr off
phase "$RELAY_PID"
start_client plain "$TARGET" --inspect off --quiet
requests "http://$RELAY_HTTP" "$HOST" 50
curl -sS -o /dev/null -H 'Host: nobody.localhost' "http://$RELAY_HTTP/"
phase "$RELAY_PID"
sleep 2
phase "$RELAY_PID"
stop_within 120 "$CLIENT_PID"
stop_within 120 "$RELAY_PID"
start_relay relay --https-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0
phase "$RELAY_PID"
start_client plain "$TARGET" --inspect off --quiet
requests "http://$RELAY_HTTP" "$HOST" 50
PORT=${RELAY_HTTPS##*:}
requests "https://$HOST:$PORT" "$HOST" 20 -k --http1.1 --resolve "$HOST:$PORT:127.0.0.1"
requests "https://$HOST:$PORT" "$HOST" 20 -k --http2 --resolve "$HOST:$PORT:127.0.0.1"
curl -sS -o /dev/null -H 'Host: nobody.localhost' "http://$RELAY_HTTP/"
phase "$RELAY_PID"
sleep 2
phase "$RELAY_PID"
stop_within 120 "$CLIENT_PID"
stop_within 120 "$RELAY_PID"

echo "link-order.sh: profiling porthole (inspector off and on, local mode)…"
start_relay plain --admin-addr off
for mode in inspect quiet; do
    if [ $mode = inspect ]; then start_client client-$mode "$TARGET" --inspect 127.0.0.1:0
    else start_client client-$mode "$TARGET" --inspect off --quiet
    fi
    phase "$CLIENT_PID"
    requests "http://$RELAY_HTTP" "client-$mode.localhost" 50
    phase "$CLIENT_PID"
    sleep 2
    phase "$CLIENT_PID"
    stop_within 120 "$CLIENT_PID"
done
stop_within 120 "$RELAY_PID"
# Local mode: the in-process relay and the built-in target.
PORTHOLE_DATA_DIR=$WORK/c-local run_as client-local "$BIN/porthole" http --json \
    --local-addr 127.0.0.1:0 --inspect 127.0.0.1:0 >"$WORK/local.out" 2>&1 &
PIDS+=($!)
LOCAL_PID=$!
wait_for "$WORK/local.out" '"url"' 120
URL=$(field url "$WORK/local.out")
HOSTPORT=${URL#http://}
phase "$LOCAL_PID"
requests "http://127.0.0.1:${HOSTPORT##*:}" "${HOSTPORT%%:*}" 20
phase "$LOCAL_PID"
sleep 2
phase "$LOCAL_PID"
stop_within 120 "$LOCAL_PID"

# The functions of each binary that ran, in the order a process needs them. The kernel
# maps 64 KiB of code around each page that first runs (fault-around), so code that did
# not run, lying between code that did, is memory too. The runs go from the leanest
# configuration to the richest (the relay: HTTP only, then HTTPS and the admin API; the
# client: inspector off, on, local mode), and the functions each run used that no
# earlier run did form one block:
# 1. those that served requests (connecting included), hottest first (own instructions
#    while serving): the per-exchange code, packed together;
# 2. those that ran while starting;
# 3. those that ran while idle.
# What ran only while stopping comes last. A process of the leanest kind thus touches
# one dense stretch at the start of .text; a richer one, that stretch and its own blocks.
# Each profile has four parts (see phase): NAME.cg.1 from start to ready, NAME.cg.2
# serving, NAME.cg.3 idle, NAME.cg stopping.
python3 - "$WORK" <<'EOF'
import collections, re, subprocess, sys
work = sys.argv[1]

def profile(path, base):
    """Own instructions per function of the binary ending in `base`, from one dump."""
    cost = collections.Counter()
    names, objs, obj, fn, after_call = {}, {}, None, None, False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            table = objs if m[2] == "ob" else names
            if m[4]:
                table[m[3]] = m[4]
            if not m[1] and m[2] == "ob":
                obj = objs.get(m[3], "")
            elif not m[1]:
                fn = names[m[3]] if obj.endswith(base) else None
                if fn:
                    cost[fn] += 0  # it ran, whatever its cost lines say
            continue
        if line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:  # the inclusive cost of a call, not this function's own
                after_call = False
            elif fn and len(line.split()) > 1:
                cost[fn] += int(line.split()[1])
    return cost

# Code that runs in place of what the profile saw goes next to it:
# - ring picks its assembly by CPU features at run time (ADX, AVX2, ...), and valgrind's
#   CPU lacks some of them: each routine's variants, and the helpers of the ADX
#   curve25519 code;
# - clap parses each flag given with glue generic over the flag's type: all its
#   instances, whichever flags an operator passes.
VARIANT = re.compile(r"_(nohw|hw|adx|avx2?|generic_masked|sse41|ssse3_4x|vaes_avx2|clmul|vpclmulqdq_avx2(_1)?)$")

def family(name):
    if re.match(r"(fe4_|fiat_25519_|inline_x25519_|ring_core_\w*fiat_curve25519_adx_)", name):
        return "x25519_scalar_mult"
    if name.startswith("ring_core_"):
        return VARIANT.sub("", re.sub(r"^ring_core_\d+_\d+_\d+__", "", name))
    if "clap_builder" in name:
        return re.sub(r"17h[0-9a-f]{16}E$", "", name)
    return None

def order(binary, profiles, out):
    base = "/" + binary.split("/")[-1]
    phases = [[profile(f"{work}/{p}.cg.{i}", base) for i in (1, 2, 3)] + [profile(f"{work}/{p}.cg", base)]
              for p in profiles]
    serving, total = collections.Counter(), collections.Counter()
    for run in phases:
        serving.update(run[1])
        for c in run:
            total.update(c)
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    text = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tT"}
    def key(n):
        first = next((i for i, run in enumerate(phases) if any(n in c for c in run[:3])), None)
        if first is None:  # ran only while stopping
            return (len(phases), 0, -total[n], n)
        start, serve, _ = phases[first][:3]
        part = 0 if n in serve else 1 if n in start else 2
        return (first, part, -(serving[n] if part == 0 else total[n]), n)
    names = sorted((n for n in total if n in text), key=key)
    families = collections.defaultdict(list)
    for n in sorted(text):
        if family(n):
            families[family(n)].append(n)
    placed, listed = set(), []
    # The C runtime's entry and its init function (run before main; callgrind's profile
    # does not name it) first.
    for n in [c for c in ("_start", "frame_dummy") if c in text] + names:
        for m in [n] + families.get(family(n), []):
            if m not in placed:
                placed.add(m)
                listed.append(m)
    with open(out, "w") as f:
        f.write("".join(n + "\n" for n in listed))
    print(f"link-order.sh: {out}: {len(listed)} of {len(text)} functions")
order("target/release/porthole-relay", ["relay-http", "relay"], "relay-server/link-order.txt")
order("target/release/porthole", ["client-quiet", "client-inspect", "client-local"],
      "tunnel-client/link-order.txt")
EOF
echo "link-order.sh: rebuild with cargo build --release to link in the new order"
