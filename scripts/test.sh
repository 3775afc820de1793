#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the end-to-end harness (real relay and client
# processes on loopback), the ACME test against a local Pebble and the inspector's
# browser test in headless Chromium.
# Installs Chromium and ChromeDriver from Debian's packages when they are missing and
# we are root; set PORTHOLE_SKIP_BROWSER=1 to run without a browser.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${PORTHOLE_SKIP_BROWSER:-}" != "1" ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing chromium and chromium-driver for the inspector's browser test"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
      echo "the browser test needs chromium and chromedriver:" >&2
      echo "  sudo apt-get install chromium chromium-driver   (or PORTHOLE_SKIP_BROWSER=1)" >&2
      exit 1
    fi
  fi
fi

# The ACME test runs Pebble (Debian's `pebble`: pebble and pebble-challtestsrv); the
# deploy test runs `systemd-analyze verify` (Debian's `systemd`); a streaming test
# reads the relay's socket state with `ss` (iproute2); the lossy-link test makes a
# network namespace with `ip` (iproute2) and drops packets with `nft` (nftables;
# PORTHOLE_SKIP_NETNS=1 skips that test).
missing=()
command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || missing+=(pebble)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v ss >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${PORTHOLE_SKIP_NETNS:-}" != "1" ]; then
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the ACME, deploy, CI-script and lossy-link tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need: ${missing[*]}" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# The end-to-end tests run the workspace's binaries (porthole, porthole-relay). Cargo
# builds a package's binaries only for that package's own integration tests, so build
# them all first: a clean clone would otherwise lack porthole-relay.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
