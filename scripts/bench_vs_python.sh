#!/usr/bin/env bash
# Ours vs sentence-transformers, in one run, on the same generated pairs:
# our engine (f32, i8), our server end to end over gRPC (f32, i8) and
# sentence-transformers' CrossEncoder on the CPU, as pairs/s, ratios and % of
# the f32 GEMM roofline measured in the same run; plus the largest logit
# difference between the two on those pairs.
#
# The Python side (sentence-transformers and torch, a few GB with torch's
# CUDA libraries) is installed once into .venv-bench (CE_BENCH_VENV to put it
# elsewhere). Extra flags go to ce-vs-python (e.g. --requests 24 --json out.json).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/fetch_model.sh
venv=${CE_BENCH_VENV:-$root/.venv-bench}
if ! "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
    echo "installing sentence-transformers into $venv (once; torch is large)…" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet sentence-transformers
fi
cargo build --release --quiet -p supervisor
cargo build --release --quiet -p ce-bench --bin ce-vs-python
exec target/release/ce-vs-python --model "$root/models/minilm-l6-ce" \
    --python "$venv/bin/python" --python-script "$root/scripts/bench_python.py" "$@"
