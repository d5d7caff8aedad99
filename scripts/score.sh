#!/usr/bin/env bash
# Scores (query, passage) pairs from JSON lines with the default model:
#   scripts/score.sh [FILE.jsonl] [ce-score flags…]   (default: examples/pairs.jsonl)
# Fetches the model and builds a release binary on first use.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
input=${1:-examples/pairs.jsonl}
[ $# -gt 0 ] && shift
scripts/fetch_model.sh
cargo build --release --quiet -p model-worker --bin ce-score
exec target/release/ce-score --model "$root/models/minilm-l6-ce" "$@" < "$input"
