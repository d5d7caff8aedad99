#!/usr/bin/env bash
# Every experiment in conf/experiment/, then experiments/results/SUMMARY.md.
#   scripts/run_all_experiments.sh [--quick] [--slo-p99-ms 2000]
# --quick uses each file's [quick] overrides (a few minutes on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
quick=()
slo=(--slo-p99-ms 2000)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick) ;;
    --slo-p99-ms) slo=(--slo-p99-ms "$2"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
scripts/build_release.sh
cargo build --release --locked --quiet -p ce-bench --bin ce-bench
started=$(date +%s)
failed=()
for config in conf/experiment/*.toml; do
  echo "== $config"
  target/release/ce-bench experiment "$config" --model "$root/models/minilm-l6-ce" "${quick[@]}" \
    || failed+=("$config")
done
target/release/ce-bench summary "${slo[@]}"
echo "all experiments: $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
