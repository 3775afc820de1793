# Helpers sourced by scripts/link-order.sh, scripts/pgo.sh, scripts/footprint.sh and
# scripts/rustc-pgo.sh; defining them has no other effect.

# wait_for FILE TEXT [SECONDS]: waits up to SECONDS (default 20) for FILE to contain
# TEXT; otherwise prints FILE and exits 1.
wait_for() {
    for _ in $(seq $((${3:-20} * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$(basename "$0"): timed out waiting for '$2' in $1" >&2
    cat "$1" >&2 || true
    exit 1
}

# field KEY FILE: the first "KEY":"VALUE" of a one-line JSON file (empty if it has none).
field() { { grep -o "\"$1\":\"[^\"]*\"" "$2" || true; } | head -1 | cut -d'"' -f4; }

# llvm_major RUSTC: the major version of the LLVM that RUSTC is built with (empty if it
# does not say). pgo.sh records it beside the profile; rustc-pgo.sh compares with it.
llvm_major() { "$1" -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'; }

# scratch: sets WORK to a new temporary directory and PIDS to an empty list, where the
# caller adds the background processes it starts; when the script exits they are
# killed and waited for, and WORK is removed.
scratch() {
    WORK=$(mktemp -d)
    PIDS=()
    trap scratch_cleanup EXIT
}
scratch_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# stop_within SECONDS PID: stops PID with SIGINT, as Ctrl-C does, and waits up to
# SECONDS for it to exit (a profiled process writes its counts then); otherwise exits 1.
stop_within() {
    kill -INT "$2"
    for _ in $(seq $(($1 * 10))); do
        if ! kill -0 "$2" 2>/dev/null; then
            wait "$2" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
    echo "$(basename "$0"): process $2 did not stop within $1 s of SIGINT" >&2
    exit 1
}

# webhook_body FILE: writes the benchmark's webhook, a 4 KiB JSON POST body, to FILE.
webhook_body() {
    python3 -c 'import json; print(json.dumps({"type": "event", "data": "x" * 4000}))' >"$1"
}

# post_hooks URL HOST N FILE [CURL-ARG...]: N keep-alive POSTs of the JSON in FILE to
# URL/hook with Host HOST, on one connection.
post_hooks() {
    local url=$1 host=$2 n=$3 body=$4 urls=()
    shift 4
    for _ in $(seq "$n"); do urls+=("$url/hook"); done
    curl -sS "$@" -H "Host: $host" -H 'content-type: application/json' \
        --data-binary @"$body" "${urls[@]}" >/dev/null
}
