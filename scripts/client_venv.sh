#!/usr/bin/env bash
# The Python clients the API tests drive a real server with — the official
# `cohere` SDK and schemathesis (OpenAPI conformance) — pinned, installed
# once into .venv-clients (CE_CLIENTS_VENV to put it elsewhere). Prints the
# venv's python on stdout; tests/clients.rs runs this first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CE_CLIENTS_VENV:-$root/.venv-clients}
cohere_version=7.3.1
schemathesis_version=4.32.5
python=$venv/bin/python
# Tests run in parallel: one installs, the others wait for it.
mkdir -p "$venv"
exec 9>"$venv/.install.lock"
flock 9
if ! "$python" - "$cohere_version" "$schemathesis_version" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
assert version("cohere") == sys.argv[1], version("cohere")
assert version("schemathesis") == sys.argv[2], version("schemathesis")
PY
then
    echo "client_venv: installing cohere==$cohere_version and schemathesis==$schemathesis_version into $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "cohere==$cohere_version" "schemathesis==$schemathesis_version" >&2
fi
echo "$python"
