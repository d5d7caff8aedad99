#!/usr/bin/env bash
# Every experiment in conf/experiment/, then experiments/results/SUMMARY.md.
#   scripts/run_all_experiments.sh [--quick | --standard] [--slo-p99-ms 2000]
# --standard uses each file's [standard] overrides: every grid point, shorter
# windows (about 45 minutes on 2 cores; what experiments/results holds).
# --quick uses each file's [quick] overrides (a smoke run, ~10 minutes).
# Neither: the files as written (hours on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
profile=()
slo=(--slo-p99-ms 2000)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) profile=(--quick) ;;
    --standard) profile=(--standard) ;;
    --slo-p99-ms) slo=(--slo-p99-ms "$2"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
scripts/build_release.sh
cargo build --release --locked --quiet -p ce-bench --bin ce-bench
# Every committed result is regenerated: nothing from an earlier run (or an
# experiment since removed) is left beside the new pages.
rm -f experiments/results/*.md experiments/results/*.json experiments/results/*.svg \
  experiments/distribution/*.csv
started=$(date +%s)
failed=()
for config in conf/experiment/*.toml; do
  echo "== $config"
  target/release/ce-bench experiment "$config" --model "$root/models/minilm-l6-ce" "${profile[@]}" \
    || failed+=("$config")
done
target/release/ce-bench summary "${slo[@]}"
echo "all experiments: $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
