#!/usr/bin/env bash
# Stops every ce-supervisor of this user (SIGTERM, then SIGKILL after the
# grace period; workers follow their supervisor), the compose services if
# docker is there, and reports anything still listening on the default
# ports (50051, 8000, 9091, 3001).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
grace=${CE_STOP_GRACE_S:-35}
pids=$(pgrep -u "$(id -u)" -x ce-supervisor || true)
if [ -n "$pids" ]; then
  echo "stopping ce-supervisor: $pids"
  # shellcheck disable=SC2086 # one pid per word
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq "$grace"); do
    pgrep -u "$(id -u)" -x ce-supervisor >/dev/null || break
    sleep 1
  done
  left=$(pgrep -u "$(id -u)" -x ce-supervisor || true)
  # shellcheck disable=SC2086 # one pid per word
  [ -n "$left" ] && { echo "killing $left"; kill -KILL $left 2>/dev/null || true; }
fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker compose down
fi
busy=0
for port in 50051 8000 9091 3001; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is still in use"
    busy=1
  fi
done
[ "$busy" = 0 ] && echo "all stopped; ports 50051 8000 9091 3001 free"
exit 0
