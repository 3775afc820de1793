#!/usr/bin/env bash
# Records the profile that release builds of porthole and porthole-relay are optimized
# with (pgo/merged.profdata; scripts/rustc-pgo.sh applies it). Builds both binaries
# instrumented, runs them through what they do every day on loopback (4 KiB POSTs at
# c=1 and c=64, and at c=16 over HTTPS; GETs; 100 MiB downloads and uploads; a client
# with the inspector on and one without; an unknown name), stops them cleanly so that
# they write their counts, and merges the counts. Then cleans the release build: crates
# from crates.io are not rebuilt when the profile changes.
#
# Run it after changing code an exchange runs through (docs/internals.md,
# "Profile-guided optimization"); then scripts/link-order.sh. Needs wrk and curl, and
# llvm-profdata of the LLVM rustc is built with (`apt-get install llvm-22`).
#
#   scripts/pgo.sh --check   whether the release binaries still have the profile's
#                            functions (exits 1 when not: time to record it again)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

llvm=$(llvm_major rustc)
profdata=$(command -v "llvm-profdata-$llvm" || true)
if [ -z "$profdata" ] && llvm-profdata --version 2>/dev/null | grep -q "LLVM version $llvm\."; then
  profdata=$(command -v llvm-profdata)
fi
if [ -z "$profdata" ]; then
  echo "pgo.sh: needs llvm-profdata of LLVM $llvm (rustc's): apt-get install llvm-$llvm" >&2
  exit 1
fi
if [ "${1:-}" = --check ]; then
  # The profile knows functions by symbol name, and the hash in a name covers the
  # crate's dependencies: a dependency added to relay-server renames all of its and
  # tunnel-client's functions, and the profile silently stops applying to them.
  cargo build --release --locked -p relay-server -p tunnel-client
  "$profdata" show --all-functions pgo/merged.profdata | python3 -c '
import re, subprocess, sys
names = {m.group(1).split(";")[-1] for m in (re.match(r"^  (\S.*):$", l) for l in sys.stdin) if m}
ours = [n for n in names if n.startswith(("_ZN12relay_server", "_ZN13tunnel_client"))]
have = set()
for b in ("porthole-relay", "porthole"):
    nm = subprocess.run(["nm", "target/release/" + b], capture_output=True, text=True, check=True).stdout
    have.update(p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3)
found = sum(n in have for n in ours)
print(f"pgo/merged.profdata: the release binaries have {found} of its {len(ours)} functions of relay-server and tunnel-client ({100 * found / max(1, len(ours)):.0f}%; 85–90% right after recording: the others are inlined everywhere)")
sys.exit(0 if found >= 0.8 * len(ours) else 1)
' || { echo "pgo.sh: the profile no longer matches the code: run scripts/pgo.sh" >&2; exit 1; }
  exit
fi
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "pgo.sh: needs $tool on PATH" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "building the target server and the instrumented binaries"
cargo build --release --locked -p porthole-bench
# A fixed directory for the counts, so that the next run's instrumented build is
# incremental (the flag is part of every crate's fingerprint).
gen=$root/target/pgo-gen
raw=$gen/counts
RUSTFLAGS="-Cprofile-generate=$raw" \
  cargo build --release --locked -p relay-server -p tunnel-client --target-dir "$gen"
rm -rf "$raw" # counts of build scripts run by that build, or of an earlier run

target/release/porthole-bench target-server --threads 1 >"$work/target.out" 2>&1 &
pids+=($!)
wait_for "$work/target.out" '^listening '
target=$(sed -n 's/^listening //p' "$work/target.out")

relay=$gen/release/porthole-relay
client=$gen/release/porthole
token=$("$relay" token add pgo --data-dir "$work/relay" | tail -1)
pin=$("$relay" fingerprint --data-dir "$work/relay" | tail -1)
RUST_LOG=warn "$relay" serve --data-dir "$work/relay" --domain localhost \
  --http-addr 127.0.0.1:0 --https-addr 127.0.0.1:0 --tunnel-addr 127.0.0.1:0 \
  --admin-addr off --json \
  >"$work/relay.out" 2>&1 &
relay_pid=$!
pids+=($relay_pid)
wait_for "$work/relay.out" '"listening"'
http=$(field http "$work/relay.out")
https=$(field https "$work/relay.out")
tunnel=$(field tunnel "$work/relay.out")
client_pids=()
for name in plain inspected; do
  inspect=off
  [ "$name" = inspected ] && inspect=127.0.0.1:0
  PORTHOLE_DATA_DIR="$work/$name" RUST_LOG=warn "$client" http "$target" --relay "$tunnel" \
    --token "$token" --relay-pin "$pin" --name "$name" --inspect "$inspect" --json --quiet \
    >"$work/$name.out" 2>&1 &
  client_pids+=($!)
  pids+=($!)
  wait_for "$work/$name.out" '"ready"'
done

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/json"
LUA
load() { # connections seconds host [script]
  wrk -t1 -c"$1" -d"$2s" ${4:+-s "$4"} -H "Host: $3.localhost" "$url" | grep Requests/sec
}
echo "training"
url=https://$https/
load 16 3 plain "$work/post.lua"
url=http://$http/
load 1 6 plain "$work/post.lua"
load 64 6 plain "$work/post.lua"
load 1 2 plain
load 1 2 inspected "$work/post.lua"
load 16 2 inspected "$work/post.lua"
for _ in 1 2 3; do
  curl -sS -o /dev/null -H "Host: plain.localhost" "${url}download/104857600"
done
for _ in 1 2; do
  head -c 104857600 /dev/zero |
    curl -sS -o /dev/null -H "Host: plain.localhost" --data-binary @- "${url}upload"
done
curl -sS -o /dev/null -H "Host: nobody.localhost" "$url"
for p in "${client_pids[@]}"; do stop_within 10 "$p"; done
stop_within 10 "$relay_pid"

# Sparse: functions that never ran carry no counts and are optimized as without a
# profile. With their zero counts kept (8.7 MB instead of 1.5 MB), LLVM optimized them
# for size: the relay's code shrank by 0.75 MB, yet its idle RSS grew by 1 MiB and c=1
# and c=64 came out slower than with this profile (two paired rounds).
"$profdata" merge --sparse -o pgo/merged.profdata "$raw"/*.profraw
echo "$llvm" >pgo/llvm-major
ls -l pgo/merged.profdata
echo "cleaning the release build, so that every crate is rebuilt with the new profile"
cargo clean --release
