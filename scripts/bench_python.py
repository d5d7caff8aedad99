#!/usr/bin/env python3
"""A Python inference stack on a pairs file, for ce-vs-python.

Reads JSON lines {"query", "passage"} (consecutive lines with one query are
one request), scores every request on the CPU with the chosen backend, and
writes {"library", "pairs", "seconds", "pairs_per_second", "scores", ...} as
JSON. Scores are raw logits of the first label, comparable to the engine's.

Backends (each times tokenization and inference, as a server would pay):
  torch      sentence-transformers' CrossEncoder.predict (its default stack)
  onnx       ONNX Runtime on the model exported with torch.onnx (f32)
  onnx-int8  the same, weights and activations dynamically quantized to int8
             (onnxruntime.quantization.quantize_dynamic, per channel)
  openvino   OpenVINO on the same ONNX export (f32)
  openvino-bf16  the same with OpenVINO's bf16 inference precision (its
             default on CPUs with AVX512-BF16 or AMX; refused elsewhere)
  openvino-int8  OpenVINO after NNCF's post-training int8 quantization,
             calibrated on the first 64 pairs of the file
  torch-llm  an LLM reranker (Qwen3) in transformers as Qwen3-Reranker's
             model card scores it: the prompt, batches padded on the left,
             the last position's logits ("no" of "no"/"yes" for a causal
             LM, kept at the last position only; the classifier's
             otherwise); --max-length as the server's
The exports are cached under --cache-dir, keyed by the model directory.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def read_requests(path):
    requests = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if requests and requests[-1][0] == row["query"]:
                requests[-1][1].append(row["passage"])
            else:
                requests.append((row["query"], [row["passage"]]))
    return requests


def run_torch(args, requests):
    import sentence_transformers
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(args.model, device="cpu", local_files_only=True, activation_fn=torch.nn.Identity())
    # Warm-up: one batch, so lazy initialisation is not timed.
    query, passages = requests[0]
    model.predict([(query, p) for p in passages[: args.batch_size]], batch_size=args.batch_size)
    scores = []
    started = time.perf_counter()
    for query, passages in requests:
        out = model.predict([(query, p) for p in passages], batch_size=args.batch_size, show_progress_bar=False)
        scores.extend(float(s) for s in out.reshape(len(passages), -1)[:, 0])
    seconds = time.perf_counter() - started
    library = f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}"
    return library, scores, seconds


def export_onnx(args, tokenizer):
    """The model as ONNX (dynamic batch and length), exported once."""
    import torch
    from transformers import AutoModelForSequenceClassification

    key = hashlib.sha256(str(Path(args.model).resolve()).encode()).hexdigest()[:16]
    out_dir = Path(args.cache_dir) / key
    out = out_dir / "model.onnx"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    sample = tokenizer(["a query"] * 2, ["a passage of some words"] * 2, padding=True, return_tensors="pt")
    inputs = tuple(sample[n] for n in names)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["logits"] = {0: "batch"}

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).logits

    with torch.no_grad():
        torch.onnx.export(
            Wrapped(model), inputs, str(out), input_names=names, output_names=["logits"],
            dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )
    return out


def tokenized_batches(tokenizer, requests, batch_size):
    for query, passages in requests:
        for start in range(0, len(passages), batch_size):
            chunk = passages[start : start + batch_size]
            yield tokenizer([query] * len(chunk), chunk, padding=True, truncation=True, max_length=512, return_tensors="np")


def run_exported(args, requests):
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    onnx_path = export_onnx(args, tokenizer)
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    threads = args.threads or os.cpu_count()
    if args.backend.startswith("onnx"):
        import onnxruntime as ort

        path = onnx_path
        if args.backend == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            path = onnx_path.with_name("model.int8.onnx")
            if not path.exists():
                quantize_dynamic(str(onnx_path), str(path), weight_type=QuantType.QInt8, per_channel=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def infer(enc):
            return session.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0]

        library = f"onnxruntime {ort.__version__}"
    else:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(onnx_path))
        if args.backend == "openvino-int8":
            import nncf

            calibration = []
            for enc in tokenized_batches(tokenizer, requests, 8):
                calibration.append({n: enc[n].astype(np.int64) for n in names})
                if len(calibration) * 8 >= 64:
                    break
            model = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        precision = "bf16" if args.backend == "openvino-bf16" else "f32"
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision})
        request = compiled.create_infer_request()

        def infer(enc):
            return request.infer({n: enc[n].astype(np.int64) for n in names})[compiled.output(0)]

        library = f"openvino {ov.__version__}"
    # Warm-up on one batch.
    infer(next(tokenized_batches(tokenizer, requests[:1], args.batch_size)))
    scores = []
    started = time.perf_counter()
    for enc in tokenized_batches(tokenizer, requests, args.batch_size):
        scores.extend(float(s) for s in infer(enc)[:, 0])
    seconds = time.perf_counter() - started
    return library, scores, seconds


QWEN_PREFIX = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def run_llm(args, requests):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(args.model)
    causal = any(a.endswith("ForCausalLM") for a in config.architectures or [])
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    model = auto.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prefix = tokenizer.encode(QWEN_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN_SUFFIX, add_special_tokens=False)
    no = tokenizer.convert_tokens_to_ids("no")

    def batches(rows):
        for query, passages in rows:
            for start in range(0, len(passages), args.batch_size):
                chunk = passages[start : start + args.batch_size]
                texts = [f"<Instruct>: {QWEN_INSTRUCTION}\n<Query>: {query}\n<Document>: {d}" for d in chunk]
                body = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False, max_length=args.max_length - len(prefix) - len(suffix))
                ids = [prefix + b + suffix for b in body["input_ids"]]
                yield tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def infer(enc):
        with torch.no_grad():
            if causal:
                return model(**enc, logits_to_keep=1).logits[:, -1, no]
            return model(**enc).logits[:, 0]

    infer(next(batches(requests[:1])))
    scores = []
    started = time.perf_counter()
    for enc in batches(requests):
        scores.extend(float(s) for s in infer(enc))
    seconds = time.perf_counter() - started
    return f"transformers {transformers.__version__}, torch {torch.__version__}", scores, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--pairs", required=True, help="JSON lines of query/passage")
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8", "torch-llm"])
    ap.add_argument("--max-length", type=int, default=512, help="tokens a pair at most (torch-llm)")
    ap.add_argument("--threads", type=int, default=0, help="threads (0 = the library's default)")
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per forward")
    ap.add_argument("--cache-dir", default="target/bench-vs-python/exports", help="where exports are kept")
    args = ap.parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    requests = read_requests(args.pairs)
    if args.backend == "torch":
        library, scores, seconds = run_torch(args, requests)
    elif args.backend == "torch-llm":
        library, scores, seconds = run_llm(args, requests)
    else:
        library, scores, seconds = run_exported(args, requests)
    result = {
        "library": library,
        "backend": args.backend,
        "threads": args.threads or torch.get_num_threads(),
        "batch_size": args.batch_size,
        "pairs": len(scores),
        "seconds": seconds,
        "pairs_per_second": len(scores) / seconds,
        "scores": scores,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
