#!/usr/bin/env bash
# Ring benchmark: shared-memory rings between two processes against a Unix
# socket and memcpy, measured in the same run, once on each IPC backend
# (linux: memfd + eventfd + pidfd; portable: POSIX shm + socket pairs +
# lifeline pipes), then the two side by side. Extra flags go to
# ce-ring-bench (e.g. --seconds 5); each backend's JSON goes to
# target/ring-bench/ring-BACKEND.json.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release --quiet -p ce-common --bin ce-ring-peer -p ce-bench --bin ce-ring-bench
out=target/ring-bench
mkdir -p "$out"
backends=(portable)
[ "$(uname -s)" = Linux ] && backends=(linux portable)
for backend in "${backends[@]}"; do
    echo "# CE_IPC=$backend"
    CE_IPC=$backend target/release/ce-ring-bench "$@" --json "$out/ring-$backend.json"
    echo
done
python3 - "$out" "${backends[@]}" <<'PY'
import json, pathlib, sys
out, backends = pathlib.Path(sys.argv[1]), sys.argv[2:]
reports = {b: json.loads((out / f"ring-{b}.json").read_text()) for b in backends}
print("## The backends side by side\n")
print("| | " + " | ".join(backends) + " |")
print("|---|" + "---:|" * len(backends))
def row(name, get):
    print(f"| {name} | " + " | ".join(get(reports[b]) for b in backends) + " |")
for i, frame in enumerate(("64 KiB", "1 MiB")):
    row(f"ring GB/s, {frame} frames", lambda r: f"{r['throughput'][i]['ring_gbps']:.2f}")
    row(f"ring / socket, {frame}", lambda r: f"{r['throughput'][i]['ring_over_socket']:.2f}×")
for peer in ("awake", "asleep"):
    def rtt(r, peer=peer):
        l = next(x for x in r["latency"] if x["transport"] == "ring" and x["peer"] == peer)
        return f"{l['p50_us']:.1f} / {l['p99_us']:.1f}"
    row(f"64 B round trip, {peer} peer, p50 / p99 µs", rtt)
row("idle CPU, % of a core (supervisor + worker)",
    lambda r: f"{r['idle']['supervisor_cpu_percent'] + r['idle']['worker_cpu_percent']:.3f}")
PY
