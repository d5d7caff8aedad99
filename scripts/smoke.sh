#!/usr/bin/env bash
# A newcomer's first look: start the server on spare ports, send one rerank
# (with grpcurl if installed, else ce-rerank), print the ranks, stop.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/fetch_model.sh
cargo build --release --quiet -p supervisor
cargo build --release --quiet -p ce-bench --bin ce-rerank
grpc=127.0.0.1:50551
http=127.0.0.1:8551
target/release/ce-supervisor --model "$root/models/minilm-l6-ce" --grpc-addr $grpc --http-addr $http &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://$http/health" >/dev/null 2>&1 && break
  sleep 0.1
done
query="how do rust lifetimes work"
if command -v grpcurl >/dev/null; then
  grpcurl -plaintext -d "{\"query\": \"$query\", \"documents\": [\"Lifetimes tell the compiler how long references live.\", \"Bananas are yellow.\"], \"return_documents\": true}" \
    $grpc ce.v1.CrossEncoder/Rerank
else
  target/release/ce-rerank --addr "http://$grpc" --query "$query" \
    "Lifetimes tell the compiler how long references live." "Bananas are yellow."
fi
