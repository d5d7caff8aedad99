#!/usr/bin/env bash
# Chaos on a release build: concurrency 8 for SECONDS (default 60) while a
# random worker is SIGKILLed every 5 s and one is SIGSTOPped; fails on any
# failed request, wrong score or unreplaced worker. CE_CHAOS_SEED repeats
# a run's victims.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_model.sh
CE_CHAOS_SECONDS=${1:-60} exec cargo test --release --locked -p supervisor --test chaos -- --nocapture
