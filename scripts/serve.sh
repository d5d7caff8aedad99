#!/usr/bin/env bash
# The main job: serve the default model with ce-supervisor.
#   scripts/serve.sh [ce-supervisor flags…]   e.g. --replicas 2 --tokenizers 1
# gRPC on 127.0.0.1:50051, HTTP (/rerank, /health, /info, /metrics) on
# 127.0.0.1:8000. Fetches the model and builds release binaries on first use.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build_release.sh
exec target/release/ce-supervisor --config conf/config.toml --model "$root/models/minilm-l6-ce" "$@"
