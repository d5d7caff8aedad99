#!/usr/bin/env bash
# Type-checks the whole workspace (every target, tests included) for macOS
# on Apple Silicon, and the Metal variant, from a Linux machine: what keeps
# Linux-only calls behind cfg(target_os = "linux"). Nothing is linked, so a
# stand-in C compiler satisfies the build scripts that compile C (ring, …);
# a real Mac runs scripts/test.sh instead. Skips, saying so, when the
# target's standard library cannot be installed here.
#   scripts/check_macos.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=aarch64-apple-darwin
if [ "$(uname -s)" = Darwin ]; then
  echo "on macOS already: scripts/test.sh builds and tests natively"
  exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  if ! rustup target add "$target" >/dev/null 2>&1; then
    echo "skipped: the $target standard library is not installed and rustup could not add it" >&2
    exit 0
  fi
fi
dir=$PWD/target/macos-check
mkdir -p "$dir"
# The stand-in answers cc-rs's compiler probe as clang and leaves an empty
# file wherever an object or archive is asked for.
cat > "$dir/cc" <<'CC'
#!/bin/sh
for a in "$@"; do
  case "$a" in
    -E) echo '#pragma message "clang"'; exit 0 ;;
    '-?') exit 1 ;;
  esac
done
prev=""
for a in "$@"; do
  [ "$prev" = "-o" ] && : > "$a"
  prev="$a"
done
exit 0
CC
chmod +x "$dir/cc"
export CC_aarch64_apple_darwin="$dir/cc" CXX_aarch64_apple_darwin="$dir/cc" AR_aarch64_apple_darwin=ar
export RUSTFLAGS="-D warnings"
echo "== cargo check --target $target (workspace, all targets)"
cargo check --quiet --locked --workspace --all-targets --target "$target" --target-dir "$dir"
echo "== cargo check --target $target --features metal (model worker, supervisor)"
cargo check --quiet --locked -p model-worker -p supervisor \
  --features model-worker/metal,supervisor/metal --target "$target" --target-dir "$dir"
echo "macOS type-check clean"
