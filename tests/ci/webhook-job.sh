#!/usr/bin/env bash
# A CI job as a user would write it, run by tests/tests/ci.rs: start the client with a
# deterministic name, wait for readiness through --ready-file (no log parsing), send a
# webhook, and assert with `porthole wait` that it reached the target.
#
# Needs: PORTHOLE (client binary), PORTHOLE_RELAY, PORTHOLE_RELAY_PIN, PORTHOLE_TOKEN,
# TARGET (local port or HOST:PORT), RELAY_HTTP (relay's public HTTP HOST:PORT).
# MODE=match (default) sends the webhook; MODE=timeout waits for one that never comes.
# Exits with `porthole wait`'s code.
set -euo pipefail

work=$(mktemp -d)
export PORTHOLE_DATA_DIR="$work/data"
ready="$work/ready.json"

"$PORTHOLE" http "$TARGET" --name pr-123 --inspect 127.0.0.1:0 --ready-file "$ready" --quiet \
  >"$work/porthole.log" 2>&1 &
porthole_pid=$!
trap 'kill "$porthole_pid" 2>/dev/null || true; wait "$porthole_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

# Readiness: the ready file appears once the tunnel is online (bounded: 20 s).
for _ in $(seq 1 200); do
  [ -s "$ready" ] && break
  if ! kill -0 "$porthole_pid" 2>/dev/null; then
    echo "porthole exited before it was ready:" >&2
    cat "$work/porthole.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$ready" ] || { echo "porthole not ready within 20s" >&2; exit 1; }

inspect=$(sed -n 's/.*"inspect":"\([^"]*\)".*/\1/p' "$ready" | head -n1)
url=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$ready" | head -n1)
echo "tunnel online at $url, inspector $inspect"

if [ "${MODE:-match}" = "match" ]; then
  # The "provider" sends its webhook to the public URL (routed by Host).
  curl -sS --fail-with-body -o /dev/null -H "Host: pr-123.localhost" \
    -H 'Content-Type: application/json' \
    --data '{"id":"evt_1","type":"payment_intent.succeeded"}' \
    "http://$RELAY_HTTP/stripe"
  "$PORTHOLE" wait --inspect "$inspect" --method POST --path /stripe \
    --body-contains payment_intent --timeout 20s
else
  "$PORTHOLE" wait --inspect "$inspect" --method POST --path /never \
    --timeout "${WAIT_TIMEOUT:-2s}"
fi
