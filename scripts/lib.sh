# Helpers sourced by scripts/link-order.sh and scripts/pgo.sh.

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
