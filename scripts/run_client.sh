#!/usr/bin/env bash
# The load generator against a running server (scripts/serve.sh or
# run_server.sh), e.g.:
#   scripts/run_client.sh --passages 128 --concurrency 1,2,4,8 --json out.json
#   scripts/run_client.sh --rate 0.5,1,1.5             # open loop, Poisson arrivals
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --quiet -p ce-bench --bin ce-bench
exec target/release/ce-bench run "$@"
