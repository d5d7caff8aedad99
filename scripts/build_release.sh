#!/usr/bin/env bash
# Release build of the three executables plus the default model: what
# scripts/serve.sh runs before serving and what the Dockerfiles run, so the
# image is built by the same, tested commands (scripts/test.sh runs it).
#   CE_CARGO_FEATURES=cuda scripts/build_release.sh   # the CUDA variant
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_model.sh
features=()
[ -n "${CE_CARGO_FEATURES:-}" ] && features=(--features "$CE_CARGO_FEATURES")
cargo build --release --locked --quiet -p supervisor "${features[@]}"
for exe in ce-supervisor ce-tokenizer-worker ce-model-worker; do
  [ -x "target/release/$exe" ] || { echo "build_release: target/release/$exe missing" >&2; exit 1; }
done
