#!/usr/bin/env bash
# Runs the experiment conf/experiment/NAME.toml:
#   scripts/run_experiment.sh 10_multi_model_pool [--quick | --standard]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?usage: scripts/run_experiment.sh NAME [--quick | --standard]}
shift
exec scripts/run_sweep_experiment.sh "conf/experiment/$name.toml" "$@"
