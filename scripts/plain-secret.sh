#!/usr/bin/env bash
# Print the Secret the plain manifests in k8s/manifests/ read (chancepay-secrets), with fresh
# random passwords, as YAML on stdout. It is the chart's own Secret (charts/chancepay/templates/
# secret.yaml, chancepay.secretData in _helpers.tpl) rendered for release "chancepay" in NAMESPACE,
# with Helm's labels and annotations left out: no second copy of its SQL, definitions or URLs.
# Rendered by the helm CLI when it is on PATH, else by Helm's engine in the project's test venv
# (scripts/chart-secret.py; CHANCEPAY_PYTHON names another Python with helm-sdkpy and PyYAML).
# tests/deploy runs this script and checks it, and tests/chart starts the servers with its output.
#
#   scripts/plain-secret.sh [NAMESPACE] > chancepay-secrets.yaml
#   kubectl apply -f chancepay-secrets.yaml    # keep this file: the data volumes need these passwords
set -euo pipefail

namespace="${1:-chancepay}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

render() {
  if command -v helm >/dev/null 2>&1; then
    helm template chancepay "$root/charts/chancepay" --namespace "$namespace" --show-only templates/secret.yaml
    return
  fi
  local python="${CHANCEPAY_PYTHON:-$root/.venv-test/bin/python}"
  if [ ! -x "$python" ]; then
    echo "plain-secret.sh: needs the helm CLI (https://helm.sh/docs/intro/install/) or the test venv" \
         "(make test-venv; or CHANCEPAY_PYTHON=<a python with helm-sdkpy and PyYAML>)" >&2
    return 2
  fi
  "$python" "$root/scripts/chart-secret.py" "$namespace"
}

# Keep the document as rendered, apart from helm template's "---"/"# Source" lines and every
# metadata field but name and namespace (Helm's labels and resource-policy mean nothing here).
rendered="$(render)"
printf '%s\n' "$rendered" | awk '
  /^---/ || /^# Source:/ { next }
  /^[^ ]/ { meta = ($0 ~ /^metadata:/) }
  meta && /^  [^ ]/ { keep = ($0 ~ /^  (name|namespace):/) }
  !meta || /^metadata:/ || keep { print }
'
