#!/usr/bin/env bash
# Serving overhead: the bare engine vs the same requests through a real
# ce-supervisor over gRPC (R=1,T=1 and R=2,T=1 by default), in one run.
# Extra flags go to ce-serve-bench (e.g. --requests 24 --json serve.json).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/fetch_model.sh
cargo build --release --quiet -p supervisor
cargo build --release --quiet -p ce-bench --bin ce-serve-bench
exec target/release/ce-serve-bench --model "$root/models/minilm-l6-ce" "$@"
