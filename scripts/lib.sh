# Helpers sourced by scripts/link-order.sh, scripts/pgo.sh and scripts/rustc-pgo.sh;
# defining them has no other effect.

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
