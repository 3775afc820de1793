#!/bin/sh
# Example --acme-dns-hook: publishes the DNS-01 record with nsupdate (RFC 2136 dynamic
# updates, e.g. BIND or PowerDNS). Called as: HOOK present|cleanup DOMAIN VALUE.
# Set NSUPDATE_SERVER and NSUPDATE_KEY (a TSIG key file) in the relay's environment.
# It must return only once the record is published: the CA checks right after.
set -eu
action=$1 domain=$2 value=$3
record="_acme-challenge.$domain."
case "$action" in
  present) cmd="update add $record 60 IN TXT \"$value\"" ;;
  cleanup) cmd="update delete $record TXT \"$value\"" ;;
  *) echo "unknown action $action" >&2; exit 2 ;;
esac
printf 'server %s\n%s\nsend\n' "${NSUPDATE_SERVER:?set NSUPDATE_SERVER}" "$cmd" \
  | nsupdate -k "${NSUPDATE_KEY:?set NSUPDATE_KEY}"
if [ "$action" = present ]; then
  # Wait (bounded) until the authoritative server answers with the value.
  for _ in $(seq 1 30); do
    dig +short TXT "$record" @"$NSUPDATE_SERVER" | grep -q -- "$value" && exit 0
    sleep 2
  done
  echo "record $record not visible after 60s" >&2
  exit 1
fi
