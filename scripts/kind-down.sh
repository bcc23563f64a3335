#!/usr/bin/env bash
# make kind-down: delete the kind cluster made by `make kind-up` (all its data goes with it).
set -euo pipefail
CLUSTER="${CLUSTER:-chancepay}"
if ! command -v kind >/dev/null 2>&1; then
    echo "kind-down: 'kind' is not on PATH" >&2
    exit 1
fi
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind delete cluster --name "$CLUSTER"
else
    echo "kind-down: no cluster named '$CLUSTER'"
fi
