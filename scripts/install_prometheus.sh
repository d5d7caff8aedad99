#!/usr/bin/env bash
# Installs Debian's prometheus package (Homebrew's on macOS: prometheus +
# promtool) when either is missing: the metrics test runs a real Prometheus against a real server.
# The package's service is not started (tests start their own on loopback).
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if [ "$(uname -s)" = Darwin ] && command -v brew >/dev/null; then
  echo "installing Homebrew's prometheus (for the metrics test)…"
  brew install prometheus >/dev/null
  prometheus --version 2>&1 | head -1
  exit 0
fi
command -v apt-get >/dev/null || {
  echo "prometheus/promtool missing and no apt-get here: install Prometheus 2.x yourself" >&2
  exit 1
}
echo "installing Debian's prometheus package (for the metrics test)…"
# Keep the package's init script from starting a server on :9090.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -1
