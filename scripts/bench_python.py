#!/usr/bin/env python3
"""sentence-transformers' CrossEncoder on a pairs file, for ce-vs-python.

Reads JSON lines {"query", "passage"} (consecutive lines with one query are
one request), scores every request with CrossEncoder.predict on the CPU, and
writes {"pairs", "seconds", "pairs_per_second", "scores", ...} as JSON.
Scores are raw logits (identity activation), comparable to the engine's.
"""

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--pairs", required=True, help="JSON lines of query/passage")
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict batch size")
    args = ap.parse_args()

    import torch
    import sentence_transformers
    from sentence_transformers import CrossEncoder

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    requests = []
    with open(args.pairs, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if requests and requests[-1][0] == row["query"]:
                requests[-1][1].append(row["passage"])
            else:
                requests.append((row["query"], [row["passage"]]))

    model = CrossEncoder(
        args.model, device="cpu", local_files_only=True, activation_fn=torch.nn.Identity()
    )
    # Warm-up: one batch, so lazy initialisation is not timed.
    query, passages = requests[0]
    model.predict([(query, p) for p in passages[: args.batch_size]], batch_size=args.batch_size)

    scores = []
    started = time.perf_counter()
    for query, passages in requests:
        out = model.predict(
            [(query, p) for p in passages], batch_size=args.batch_size, show_progress_bar=False
        )
        scores.extend(float(s) for s in out.reshape(len(passages), -1)[:, 0])
    seconds = time.perf_counter() - started

    result = {
        "library": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
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
