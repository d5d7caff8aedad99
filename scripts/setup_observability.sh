#!/usr/bin/env bash
# Pulls the Prometheus and Grafana images of docker-compose.yml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker compose pull
