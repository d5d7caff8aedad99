#!/usr/bin/env bash
# Starts Prometheus (:9091) and Grafana (:3001) from docker-compose.yml;
# start the server itself with scripts/serve.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker compose up -d
echo "Prometheus: http://localhost:9091  Grafana: http://localhost:3001 (dashboard ce-supervisor)"
