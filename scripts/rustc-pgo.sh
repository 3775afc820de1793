#!/usr/bin/env bash
# rustc wrapper (.cargo/config.toml, build.rustc-wrapper): optimized builds of every
# crate use the profile in pgo/merged.profdata, recorded by scripts/pgo.sh
# (profile-guided optimization: docs/internals.md, "Profile-guided optimization").
# Debug and test builds, builds that record a profile, rustc older than the LLVM that
# wrote the profile (it could not read it) and PORTHOLE_PGO=0 run rustc unchanged.
rustc=$1
shift
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(dirname "$scripts")/pgo"
use=0
for arg in "$@"; do
    case $arg in
    opt-level=[123s] | opt-level=z | -Copt-level=[123sz]) use=1 ;;
    *profile-generate* | *profile-use*)
        use=0
        break
        ;;
    esac
done
if [[ $use == 1 && ${PORTHOLE_PGO:-1} != 0 && -f $dir/merged.profdata ]]; then
    # shellcheck source=scripts/lib.sh
    source "$scripts/lib.sh"
    llvm=$(llvm_major "$rustc")
    if [[ -n $llvm && $llvm -ge $(cat "$dir/llvm-major" 2>/dev/null || echo 999) ]]; then
        exec "$rustc" "$@" -Cprofile-use="$dir/merged.profdata"
    fi
fi
exec "$rustc" "$@"
