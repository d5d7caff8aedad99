#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and driver (the library's
# lent device, or yours): one short run that says whether the CUDA variant
# is right and how fast it is, in about five minutes.
#
#   scripts/gpu_check.sh [--out DIR] [--pairs N]
#
# 1. The GPU as the driver describes it (nvidia-smi), and its dense
#    f16/bf16 tensor-core roofline from its SM count and top clock.
# 2. The CUDA variant: target/cuda and target/cuda/ce-engine-bench when they
#    are there (carried from a build machine), else scripts/build_cuda.sh
#    --bench for this GPU's compute capability (needs the package registries).
#    Where the toolkit libraries of the build machine are absent, they are
#    looked for here (CUDA_HOME, /usr/local/cuda, a Python nvidia/cu13 wheel).
# 3. Fidelity on cuda:0: the golden parity (f32, TF32 off, within 1e-4 of
#    transformers' logits on the golden pairs, one by one and batched) and,
#    against the CPU engine in f32 on the standard workload, f32 max |Δ| ≤
#    1e-4 and f16/bf16 Kendall τ ≥ 0.99 in every batch.
# 4. ce-engine-bench for f16 and bf16 at 128, 256 and 512 pairs per batch.
# 5. The server end to end (conf/gpu.toml, f16) with one replica and two
#    replicas on the same GPU, against the bare CPU engine of this machine.
# Prints pairs/s and the share of the roofline; exits non-zero if a fidelity
# bound fails. Results (JSON, Markdown) go to --out (default
# target/gpu-check).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

out=$root/target/gpu-check
pairs=4096
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
command -v nvidia-smi > /dev/null || { echo "gpu_check: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 1; }
command -v python3 > /dev/null || { echo "gpu_check: python3 is needed to read the results" >&2; exit 1; }

echo "== 1. the GPU"
nvidia-smi --query-gpu=name,compute_cap,clocks.max.sm,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
IFS=, read -r gpu_name compute_cap max_clock _ < <(nvidia-smi --query-gpu=name,compute_cap,clocks.max.sm,memory.total --format=csv,noheader,nounits -i 0)
gpu_name=$(echo "$gpu_name" | xargs)
compute_cap=$(echo "$compute_cap" | xargs)
max_clock=$(echo "$max_clock" | xargs)
# Dense f16/bf16 tensor-core FLOPs per SM per clock, by architecture (the
# vendors' peak figures divided by SMs × boost clock): Ampere datacenter
# (8.0) 2048, Ampere/Ada others (8.6, 8.7, 8.9) 1024, Hopper (9.0) 4096,
# Blackwell datacenter (10.x) 8192.
roofline_tflops=$(python3 - "$gpu_name" "$compute_cap" "$max_clock" <<'PY'
import sys
name, cc, clock_mhz = sys.argv[1], sys.argv[2], float(sys.argv[3])
per_sm = {"8.0": 2048, "8.6": 1024, "8.7": 1024, "8.9": 1024, "9.0": 4096,
          "10.0": 8192, "10.3": 8192}.get(cc)
# SM counts of the usual parts; nvidia-smi does not report them.
sms = {"H200": 132, "H100 SXM": 132, "H100 80GB HBM3": 132, "H100 NVL": 132,
       "H100 PCIe": 114, "GH200": 132, "A100": 108, "L40S": 142, "L40": 142,
       "L4": 58, "A10": 72, "B200": 148, "B100": 132}
count = next((n for key, n in sorted(sms.items(), key=lambda kv: -len(kv[0]))
              if key in name), None)
if per_sm is None or count is None:
    print(0)
else:
    print(f"{count * per_sm * clock_mhz * 1e6 / 1e12:.1f}")
PY
)
echo "dense f16/bf16 tensor-core roofline: ${roofline_tflops} TFLOP/s (0: unknown part, shares not printed)"

echo "== 2. the CUDA variant"
if [ ! -x target/cuda/ce-model-worker ] || [ ! -x target/cuda/ce-engine-bench ] || [ ! -x target/release/ce-serve-bench ]; then
    scripts/build_cuda.sh --bench --compute-cap "${compute_cap//./}"
fi
scripts/fetch_model.sh
missing=$(LD_TRACE_LOADED_OBJECTS=1 target/cuda/ce-model-worker 2> /dev/null | sed -n 's/^\s*\(\S*\) => not found.*/\1/p' | tr '\n' ' ')
if [ -n "$missing" ]; then
    echo "the build machine's toolkit libraries are not here ($missing); looking for CUDA 13 on this machine"
    for dir in "${CUDA_HOME:-/nonexistent}/lib64" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 \
        $(python3 -c 'import nvidia, pathlib; print(*[pathlib.Path(p) / "cu13" / "lib" for p in nvidia.__path__])' 2> /dev/null); do
        if [ -e "$dir/libcublas.so.13" ]; then
            export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            echo "using $dir"
            break
        fi
    done
    missing=$(LD_TRACE_LOADED_OBJECTS=1 target/cuda/ce-model-worker 2> /dev/null | sed -n 's/^\s*\(\S*\) => not found.*/\1/p' | tr '\n' ' ')
    [ -z "$missing" ] || { echo "gpu_check: still missing: $missing" >&2; exit 1; }
fi
model=$root/models/minilm-l6-ce

echo "== 3 and 4. fidelity on cuda:0 and the engine at 128, 256 and 512 pairs per batch"
for per_batch in 128 256 512; do
    dtypes=f16,bf16
    fidelity=()
    if [ "$per_batch" = 128 ]; then
        dtypes=f32,f16,bf16
        fidelity=(--fidelity --golden "$root/tests/fixtures/golden_minilm_l6_ce.json")
    fi
    target/cuda/ce-engine-bench --model "$model" --device cuda:0 --dtypes "$dtypes" \
        --pairs "$pairs" --passages "$per_batch" --max-seconds 60 "${fidelity[@]}" \
        --json "$out/engine-$per_batch.json" | tee "$out/engine-$per_batch.md"
done

echo "== 5. the server end to end, one and two replicas on cuda:0 (f16)"
target/release/ce-serve-bench --model "$model" --requests 32 --passages 256 --concurrency 8 \
    --topologies 1x4 \
    --server-args="--config $root/conf/gpu.toml --worker-dir $root/target/cuda --device cuda:0" \
    --json "$out/served-1.json" | tee "$out/served-1.md"
target/release/ce-serve-bench --model "$model" --requests 32 --passages 256 --concurrency 8 \
    --topologies 2x4 \
    --server-args="--config $root/conf/gpu.toml --worker-dir $root/target/cuda --devices cuda:0,cuda:0" \
    --json "$out/served-2.json" | tee "$out/served-2.md"

echo "== summary"
python3 - "$out" "$roofline_tflops" <<'PY' | tee "$out/summary.md"
import json, pathlib, sys
out, roofline = pathlib.Path(sys.argv[1]), float(sys.argv[2])
def share(pairs_per_s, gflop_per_pair):
    if roofline <= 0:
        return "–"
    return f"{100 * pairs_per_s * gflop_per_pair / (roofline * 1e3):.1f}%"
failed = []
print("| what | pairs per batch | pairs/s | useful TFLOP/s | % of the f16/bf16 roofline |")
print("|---|---:|---:|---:|---:|")
gflop = None
for per_batch in (128, 256, 512):
    report = json.loads((out / f"engine-{per_batch}.json").read_text())
    gflop = report["gflop_per_pair"]
    for r in report["results"]:
        print(f"| engine {r['dtype']} | {per_batch} | {r['pairs_per_second']:.0f} | "
              f"{r['useful_gflops'] / 1e3:.1f} | {share(r['pairs_per_second'], gflop)} |")
        f = r.get("fidelity")
        if f is None:
            continue
        if r["dtype"] == "f32":
            bound_ok = f["max_abs_diff"] <= 1e-4 and r["golden_max_abs_diff"] <= 1e-4
        else:
            bound_ok = f["min_kendall_tau"] >= 0.99
        if not bound_ok:
            failed.append(f"{r['dtype']}: {f}, golden {r['golden_max_abs_diff']}")
served = {}
for replicas in (1, 2):
    report = json.loads((out / f"served-{replicas}.json").read_text())
    rate = report["served"][0]["pairs_per_second"]
    served[replicas] = rate
    print(f"| server f16, {replicas} replica(s) on cuda:0 | 256 | {rate:.0f} | "
          f"{rate * gflop / 1e3:.1f} | {share(rate, gflop)} |")
    cpu = report["engine_pairs_per_second_before"]
print(f"\nTwo replicas on one GPU: {served[2] / served[1]:.2f}x one (target 1.3x). "
      f"The bare CPU engine (f32, all cores) here: {cpu:.0f} pairs/s.")
print("\nFidelity against the CPU engine in f32 and against transformers on the golden pairs "
      "(bounds: f32 max |Δ| ≤ 1e-4 to both, f16/bf16 worst-batch τ ≥ 0.99):")
report = json.loads((out / "engine-128.json").read_text())
for r in report["results"]:
    f = r["fidelity"]
    print(f"- {r['dtype']}: max |Δ| {f['max_abs_diff']:.2e}, τ mean {f['mean_kendall_tau']:.4f}, "
          f"worst {f['min_kendall_tau']:.4f}; golden max |Δ| {r['golden_max_abs_diff']:.2e}")
if failed:
    print("\nFIDELITY FAILED: " + "; ".join(failed))
    sys.exit(1)
PY
