#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/, cargo-fuzz) for SECONDS each
# (default 30): the frame and token-batch decoders a worker or the
# supervisor applies to shared memory, and the HTTP bodies. Installs
# cargo-fuzz if missing. On the stable toolchain: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its instrumentation flags, and no sanitizer is used
# (those need nightly); a panic or failed assertion is a crash either way.
# Prints each target's executions; fails on any crash (the input is kept
# under fuzz/artifacts/).
#   scripts/fuzz.sh [SECONDS] [TARGET…]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frames token_batch http_bodies)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version "^0.13"
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log=$(mktemp)
    if ! cargo fuzz run --sanitizer none "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target failed" >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$log" || tail -3 "$log"
    rm -f "$log"
done
