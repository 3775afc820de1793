#!/bin/bash
# Runs h2load (Debian package nghttp2-client) against a tunnel: starts a relay and a
# client with the built-in target from $BIN (default target/release), on ephemeral
# loopback ports, then passes its arguments to h2load over prior-knowledge h2c.
#   BIN=target/debug scripts/h2load.sh -n 20000 -c 4 -m 32
set -u
BIN=${BIN:-target/release}
D=$(mktemp -d)
trap 'kill $CP $RP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
"$BIN/porthole-relay" serve --json --domain localhost --http-addr 127.0.0.1:0 \
  --tunnel-addr 127.0.0.1:0 --admin-addr off --data-dir "$D" >"$D/relay.out" 2>"$D/relay.err" &
RP=$!
for _ in $(seq 100); do grep -q listening "$D/relay.out" 2>/dev/null && break; sleep 0.1; done
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
HTTP=$(field http "$D/relay.out")
TOKEN=$("$BIN/porthole-relay" token add bench --data-dir "$D" 2>/dev/null | tail -1)
PORTHOLE_TOKEN=$TOKEN "$BIN/porthole" http --relay "$(field tunnel "$D/relay.out")" \
  --relay-pin "$(field pin "$D/relay.out")" --inspect off --json --quiet >"$D/client.out" 2>"$D/client.err" &
CP=$!
for _ in $(seq 100); do grep -q ready "$D/client.out" 2>/dev/null && break; sleep 0.1; done
NAME=$(field name "$D/client.out")
h2load "$@" -H ":authority: $NAME.localhost" "http://$HTTP/"
