#!/usr/bin/env bash
# make kind-up: a local kind cluster running ChancePay from this checkout.
#   1. kind create cluster (k8s/kind-cluster.yaml), unless it exists
#   2. docker build the three role images and kind load them
#   3. helm upgrade --install --wait: every object starts at once, the migrate Job waits for
#      MariaDB, the roles wait for their schema and broker and turn Ready when migrate is done
#   4. a smoke payment through a port-forward, then `helm test`
# Needs docker, kind, helm (v3.8+ or v4) and kubectl on PATH.
# Settings (environment): CLUSTER (chancepay), NAMESPACE (chancepay), RELEASE (chancepay),
# TAG (the chart's appVersion), LOCAL_PORT (18000), HELM_EXTRA_ARGS (e.g. "--set wallet.replicas=3").
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER="${CLUSTER:-chancepay}"
NAMESPACE="${NAMESPACE:-chancepay}"
RELEASE="${RELEASE:-chancepay}"
TAG="${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/chancepay/Chart.yaml)}"
LOCAL_PORT="${LOCAL_PORT:-18000}"
HELM_EXTRA_ARGS="${HELM_EXTRA_ARGS:-}"
ROLES=(orchestrator scanner wallet)

for tool in docker kind helm kubectl curl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "kind-up: '$tool' is not on PATH (needs docker, kind, helm, kubectl, curl)" >&2
        exit 1
    fi
done

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "kind-up: cluster '$CLUSTER' exists, reusing it"
else
    kind create cluster --name "$CLUSTER" --config k8s/kind-cluster.yaml --wait 180s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

for role in "${ROLES[@]}"; do
    docker build -f "Dockerfile.$role" -t "chancepay-$role:$TAG" .
    kind load docker-image --name "$CLUSTER" "chancepay-$role:$TAG"
done

# shellcheck disable=SC2086  # HELM_EXTRA_ARGS is a list of words on purpose
helm upgrade --install "$RELEASE" charts/chancepay \
    --namespace "$NAMESPACE" --create-namespace \
    --set "image.orchestrator.tag=$TAG" --set "image.scanner.tag=$TAG" --set "image.wallet.tag=$TAG" \
    --wait --wait-for-jobs --timeout 10m $HELM_EXTRA_ARGS

# Smoke request through a port-forward (which bypasses NetworkPolicies, as an operator's would).
kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE-orchestrator" "$LOCAL_PORT:8000" >/dev/null 2>&1 &
pf_pid=$!
trap 'kill "$pf_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
    curl -fsS "http://127.0.0.1:$LOCAL_PORT/healthz" >/dev/null 2>&1 && break
    sleep 1
done
created="$(curl -fsS -X POST "http://127.0.0.1:$LOCAL_PORT/payments" \
    -H 'Content-Type: application/json' -d '{"cusId":"kind-smoke","amount":"12.50"}')"
echo "kind-up: created $created"
uuid="$(printf '%s' "$created" | sed -n 's/.*"uuid" *: *"\([^"]*\)".*/\1/p')"
status=PENDING
for _ in $(seq 1 60); do
    status="$(curl -fsS "http://127.0.0.1:$LOCAL_PORT/payments/$uuid" | sed -n 's/.*"status" *: *"\([^"]*\)".*/\1/p')"
    [ "$status" != PENDING ] && break
    sleep 1
done
if [ "$status" = PENDING ]; then
    echo "kind-up: payment $uuid still PENDING after 60 s" >&2
    exit 1
fi
echo "kind-up: payment $uuid finalized as $status"

helm test "$RELEASE" --namespace "$NAMESPACE" --timeout 5m
echo "kind-up: ready. API: kubectl -n $NAMESPACE port-forward svc/$RELEASE-orchestrator 8000:8000"
