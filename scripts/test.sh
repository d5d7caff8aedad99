#!/usr/bin/env bash
# The project's one test command: fetch the default model and install
# Prometheus (for the metrics test) if missing, then
# formatting, lints, every test of the workspace (the chaos test included)
# and a 60 s soak. Fails on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch_model.sh
scripts/install_prometheus.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== soak (60 s on the test build)"
CE_PROFILE=dev scripts/soak.sh 60 --probe-seconds 10
