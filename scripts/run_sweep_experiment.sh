#!/usr/bin/env bash
# Runs one experiment file's sweep: a server per variant, every client load
# level, results under experiments/.
#   scripts/run_sweep_experiment.sh conf/experiment/07b_dynamic_batch.toml [--quick | --standard]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
config=${1:?usage: scripts/run_sweep_experiment.sh CONFIG.toml [--quick | --standard]}
shift
scripts/build_release.sh
cargo build --release --locked --quiet -p ce-bench --bin ce-bench
exec target/release/ce-bench experiment "$config" --model "$root/models/minilm-l6-ce" "$@"
