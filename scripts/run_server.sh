#!/usr/bin/env bash
# Serve with an experiment's server settings (its first variant, or
# --index N of its sweep):
#   scripts/run_server.sh 10_multi_model_pool [--index 1] [--quick | --standard] [-- extra ce-supervisor flags]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
name=${1:?usage: scripts/run_server.sh EXPERIMENT [--index N] [--quick | --standard] [-- flags]}
shift
bench_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do bench_args+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
scripts/build_release.sh
cargo build --release --locked --quiet -p ce-bench --bin ce-bench
settings=$(mktemp --suffix=.toml)
trap 'rm -f "$settings"' EXIT
target/release/ce-bench variant "conf/experiment/$name.toml" "${bench_args[@]}" > "$settings"
target/release/ce-supervisor --config "$settings" --model "$root/models/minilm-l6-ce" "$@"
