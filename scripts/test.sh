#!/usr/bin/env bash
# The project's one test command: fetch the default model and install
# Prometheus (for the metrics test) if missing; formatting and lints; the
# deployment files' linters; the release build the Dockerfile runs; then
# the CUDA variant (built without a GPU; the server tests check its
# refusals on a machine without a driver); every test of the workspace
# (a 20 s chaos test, a real Prometheus, an
# abuse battery, a 60 s soak, the official cohere SDK and schemathesis
# against a real server among them; the Python clients come from PyPI
# into .venv-clients via scripts/client_venv.sh); the ring, server and
# chaos tests again on the portable IPC backend (CE_IPC=portable); and a
# bounded fuzzing run of every decoder target. Fails on any failure.
# On macOS the CUDA build and the Linux-backend pass give way to the Metal
# variant's clippy; on Linux scripts/check_macos.sh type-checks for macOS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A cold build of the workspace (clippy, debug tests, release) takes about
# 7 GiB under target/; say so up front, because cargo's own "No space left on
# device" comes minutes later, in the middle of some unrelated crate.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free here; a cold build needs about 7 GiB" >&2
fi

scripts/fetch_model.sh
scripts/install_prometheus.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== deployment files and scripts (shellcheck, hadolint, kubernetes-validate)"
scripts/check_deploy.sh
echo "== release build (what the Dockerfile runs)"
scripts/build_release.sh
if [ "$(uname -s)" = Darwin ]; then
    # NVIDIA ships no macOS toolkit; the Metal variant is built instead.
    echo "== the Metal variant (clippy on model-worker and supervisor with --features metal)"
    cargo clippy --locked -p model-worker -p supervisor \
        --features model-worker/metal,supervisor/metal -- -D warnings
    echo "== cargo test (the portable IPC backend is the only one here)"
    cargo test --workspace --locked
else
    echo "== the CUDA variant (scripts/build_cuda.sh: toolkit wheels, clippy on the CUDA code)"
    scripts/build_cuda.sh --clippy
    # The server tests start the CUDA model worker without a driver and on
    # the stub driver, and check that each refusal is said once and not
    # retried.
    export CE_CUDA_VARIANT=$PWD/target/cuda
    CE_CUDA_STUB_DIR=${CE_CUDA_CACHE:-$HOME/.cache/ce-supervisor/cuda-13.4}/stub-driver
    export CE_CUDA_STUB_DIR
    echo "== macOS type-check (scripts/check_macos.sh: aarch64-apple-darwin, Metal variant)"
    scripts/check_macos.sh
    echo "== cargo test"
    cargo test --workspace --locked
    echo "== the portable IPC backend (CE_IPC=portable): rings and their lifecycle, the server tests, chaos"
    CE_IPC=portable cargo test --locked -p ce-common
    CE_IPC=portable cargo test --locked -p supervisor --test server --test chaos
fi
echo "== fuzz (20 s a target)"
scripts/fuzz.sh 20
