#!/usr/bin/env bash
# Engine benchmark on the standard workload (1 query x 128 passages), every
# dtype, against a GEMM peak measured in the same run. Extra flags go to
# ce-engine-bench (e.g. --pairs 256 --dtypes f32,q8_0 --json out.json).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/fetch_model.sh
cargo build --release --quiet -p ce-bench --bin ce-engine-bench
exec target/release/ce-engine-bench --model "$root/models/minilm-l6-ce" "$@"
