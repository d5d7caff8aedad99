#!/usr/bin/env bash
# Ours vs the Python stacks, in one run, on the same generated pairs: our
# engine (f32, bf16, i8), our server end to end over gRPC (f32, bf16, i8), and
# sentence-transformers' CrossEncoder (torch), ONNX Runtime and OpenVINO
# (f32, OpenVINO's bf16, int8) on the CPU, as pairs/s, ratios and % of the f32 GEMM
# roofline measured in the same run; each with its fidelity to our f32
# logits (max |Δ|, Kendall τ of the rankings).
#
# The Python side (sentence-transformers and torch, a few GB with torch's
# CUDA libraries; onnxruntime, openvino, nncf) is installed once into
# .venv-bench (CE_BENCH_VENV to put it elsewhere). CE_MODEL picks the model
# (default: the default model; scripts/family_fixtures.py --real-sizes makes
# random-weight ones of other families). Extra flags go to ce-vs-python, e.g.
#   scripts/bench_vs_python.sh --backends torch,onnx,onnx-int8,openvino,openvino-int8 --json out.json
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/fetch_model.sh
venv=${CE_BENCH_VENV:-$root/.venv-bench}
if ! "$venv/bin/python" -c "import sentence_transformers, onnxruntime, openvino, nncf, onnxscript" 2>/dev/null; then
    echo "installing sentence-transformers, onnxruntime, openvino and nncf into $venv (once; torch is large)…" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet sentence-transformers onnxruntime openvino nncf onnx onnxscript
fi
cargo build --release --quiet -p supervisor
cargo build --release --quiet -p ce-bench --bin ce-vs-python
exec target/release/ce-vs-python --model "${CE_MODEL:-$root/models/minilm-l6-ce}" \
    --python "$venv/bin/python" --python-script "$root/scripts/bench_python.py" "$@"
