#!/usr/bin/env bash
# Ring benchmark: shared-memory rings between two processes against a Unix
# socket and memcpy, measured in the same run. Extra flags go to
# ce-ring-bench (e.g. --seconds 5 --json ring.json).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release --quiet -p ce-common --bin ce-ring-peer -p ce-bench --bin ce-ring-bench
exec target/release/ce-ring-bench "$@"
