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
field() { python3 -c "import json,sys;print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])" "$1" "$2"; }
HTTP=$(field "$D/relay.out" http)
TOKEN=$("$BIN/porthole-relay" token add bench --data-dir "$D" 2>/dev/null | tail -1)
PORTHOLE_TOKEN=$TOKEN "$BIN/porthole" http --relay "$(field "$D/relay.out" tunnel)" \
  --relay-pin "$(field "$D/relay.out" pin)" --inspect off --json --quiet >"$D/client.out" 2>"$D/client.err" &
CP=$!
for _ in $(seq 100); do grep -q ready "$D/client.out" 2>/dev/null && break; sleep 0.1; done
NAME=$(field "$D/client.out" name)
h2load "$@" -H ":authority: $NAME.localhost" "http://$HTTP/"
