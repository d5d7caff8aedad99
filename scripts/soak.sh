#!/usr/bin/env bash
# Soak: a steady load at 70% of the measured capacity for DURATION
# (seconds, or with an s/m/h suffix) against a real ce-supervisor; samples
# every process's RSS each 10 s and fails if a request fails, a worker dies
# or any RSS grows by more than 10% after the warm-up.
#
#   scripts/soak.sh 10m                       # the full soak
#   scripts/soak.sh 60 --server-args='--replicas 2' --json soak.json
#
# CE_PROFILE=dev builds the dev profile instead of release. CI's 60 s soak
# is crates/bench/tests/soak.rs, inside `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
duration=${1:?usage: scripts/soak.sh DURATION [ce-soak flags]}
shift
case "$duration" in
  *h) seconds=$(( ${duration%h} * 3600 )) ;;
  *m) seconds=$(( ${duration%m} * 60 )) ;;
  *s) seconds=${duration%s} ;;
  *) seconds=$duration ;;
esac
profile=${CE_PROFILE:-release}
case "$profile" in
  dev|test) dir=debug ;;
  *) dir=$profile ;;
esac
scripts/fetch_model.sh
cargo build --profile "$profile" --quiet -p supervisor
cargo build --profile "$profile" --quiet -p ce-bench --bin ce-soak
exec "target/$dir/ce-soak" "$seconds" --model "$root/models/minilm-l6-ce" "$@"
