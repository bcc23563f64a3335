#!/usr/bin/env bash
# make kind-up: a local kind cluster running ChancePay from this checkout.
#   1. kind create cluster (k8s/kind-cluster.yaml), unless it exists; the kind on PATH must be the
#      pinned release (below), kubectl within one minor of the node
#   2. docker build the three role images under per-build tags and load them into kind
#   3. helm upgrade --install --wait: every object starts at once, the migrate Job waits for
#      MariaDB, the roles wait for their schema and broker and turn Ready when migrate is done
#   4. a smoke payment through a port-forward, then `helm test`
# Needs docker, kind, helm (v3.8+ or v4) and kubectl on PATH.
#
# Usage: scripts/kind-up.sh [all|pins|images|install|smoke]   (default: all = the four steps)
#   pins     print the pins (kind=, kubectl=, node_image=) as KEY=VALUE lines; needs no tool.
#            .github/workflows/kind.yaml reads them from here into helm/kind-action.
#   images   steps 1-2; prints the helm arguments that select the loaded images on stdout
#   install  steps 1-3;  smoke: step 4 against an installed release
# Settings (environment): CLUSTER (chancepay), NAMESPACE (chancepay), RELEASE (chancepay),
# TAG (one tag for all three images instead of the per-build ones), LOCAL_PORT (18000),
# HELM_EXTRA_ARGS (e.g. "--set wallet.replicas=3"), ALLOW_UNPINNED=1 (another kind release
# >= v0.27.0, or a kubectl out of the supported skew, is only warned about).
#
# Image tags: each image is tagged <git commit>-<first 12 hex digits of its image ID>, so a
# rebuild that changes anything (a commit, an uncommitted edit) gives a new tag and the next
# `make kind-up` rolls the pods, and a rebuild that changes nothing keeps the tag and the pods.
#
# Loading: `docker save --platform <the image's platform>` to an archive, then `kind load
# image-archive`. Under Docker's containerd image store (the default of Docker 29, so of GitHub's
# runners) `kind load docker-image` saves the whole multi-platform index while only one platform's
# blobs exist, and the node's `ctr images import --all-platforms` fails on the first missing
# digest (https://github.com/kubernetes-sigs/kind/issues/3795).
set -euo pipefail

cd "$(dirname "$0")/.."

# --- The pins: this file (kind, kubectl) and k8s/kind-cluster.yaml (the node image) ------------
# kind v0.30.0: https://github.com/kubernetes-sigs/kind/releases/tag/v0.30.0 (containerd 2.1.4;
# its node images are listed there by digest). kind < v0.27.0 cannot parse the containerd 2
# config (version 3) of the 1.33 node images: `kind load` fails with "failed to detect containerd
# snapshotter" (kind#3853).
KIND_VERSION=v0.30.0
KIND_VERSION_MIN=v0.27.0
# kubectl within one minor version of the API server (Kubernetes' version skew policy).
KUBECTL_VERSION=v1.33.4
NODE_IMAGE="$(sed -n 's/^ *image: *\(kindest\/node:[^ #]*\).*$/\1/p' k8s/kind-cluster.yaml | head -n 1)"

CLUSTER="${CLUSTER:-chancepay}"
NAMESPACE="${NAMESPACE:-chancepay}"
RELEASE="${RELEASE:-chancepay}"
TAG="${TAG:-}"
LOCAL_PORT="${LOCAL_PORT:-18000}"
HELM_EXTRA_ARGS="${HELM_EXTRA_ARGS:-}"
ALLOW_UNPINNED="${ALLOW_UNPINNED:-0}"
ROLES=(orchestrator scanner wallet)

WORK=""
PF_PID=""
cleanup() {
    if [ -n "$PF_PID" ]; then kill "$PF_PID" 2>/dev/null || true; fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { echo "kind-up: $*" >&2; }
die() { say "$*"; exit 1; }

print_pins() {
    [ -n "$NODE_IMAGE" ] || die "no kindest/node image in k8s/kind-cluster.yaml"
    echo "kind=$KIND_VERSION"
    echo "kubectl=$KUBECTL_VERSION"
    echo "node_image=$NODE_IMAGE"
}

# version_lt A B: true when version A sorts before B (v-prefixed semver, no pre-release parts).
version_lt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]; }

minor_of() { printf '%s\n' "$1" | sed -n 's/^v\{0,1\}[0-9]*\.\([0-9]*\).*$/\1/p'; }

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH (needs $*)"
    done
}

check_versions() {
    local kind_version kubectl_version node_minor kubectl_minor skew
    kind_version="$(kind version 2>/dev/null | awk '{print $2}')"
    [ -n "$kind_version" ] || die "cannot read the version of 'kind' ('kind version')"
    if version_lt "$kind_version" "$KIND_VERSION_MIN"; then
        die "kind $kind_version is older than $KIND_VERSION_MIN and cannot load images into $NODE_IMAGE (kind#3853); install kind $KIND_VERSION"
    fi
    if [ "$kind_version" != "$KIND_VERSION" ]; then
        if [ "$ALLOW_UNPINNED" = 1 ]; then
            say "warning: kind $kind_version, not the pinned $KIND_VERSION whose node image k8s/kind-cluster.yaml names"
        else
            die "kind $kind_version is not the pinned $KIND_VERSION (k8s/kind-cluster.yaml names a node image built for it); install it, or set ALLOW_UNPINNED=1"
        fi
    fi
    kubectl_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: *\(v[0-9.]*\).*$/\1/p')"
    node_minor="$(minor_of "${NODE_IMAGE#kindest/node:}")"
    kubectl_minor="$(minor_of "$kubectl_version")"
    if [ -z "$kubectl_minor" ] || [ -z "$node_minor" ]; then
        say "warning: cannot compare kubectl '$kubectl_version' with the node image $NODE_IMAGE"
        return 0
    fi
    skew=$((kubectl_minor - node_minor))
    if [ "$skew" -gt 1 ] || [ "$skew" -lt -1 ]; then
        if [ "$ALLOW_UNPINNED" = 1 ]; then
            say "warning: kubectl $kubectl_version is more than one minor away from the node ($NODE_IMAGE)"
        else
            die "kubectl $kubectl_version is more than one minor away from the node ($NODE_IMAGE); install kubectl $KUBECTL_VERSION, or set ALLOW_UNPINNED=1"
        fi
    fi
}

ensure_cluster() {
    need_tools docker kind kubectl
    check_versions
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        say "cluster '$CLUSTER' exists, reusing it"
    else
        kind create cluster --name "$CLUSTER" --config k8s/kind-cluster.yaml --wait 180s >&2
    fi
    kubectl config use-context "kind-$CLUSTER" >/dev/null
}

# build_and_load: builds and loads the three images; sets IMAGE_TAGS (role=tag ...).
IMAGE_TAGS=()
build_and_load() {
    local role commit iid tag ref platform save_platform=()
    commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)"
    WORK="$(mktemp -d)"
    for role in "${ROLES[@]}"; do
        docker build -f "Dockerfile.$role" --iidfile "$WORK/$role.iid" -t "chancepay-$role:build" . >&2
        iid="$(sed 's/^sha256://' "$WORK/$role.iid")"
        tag="${TAG:-$commit-${iid:0:12}}"
        ref="chancepay-$role:$tag"
        docker tag "chancepay-$role:build" "$ref"
        if docker save --help 2>/dev/null | grep -q -- '--platform'; then
            platform="$(docker image inspect -f '{{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}' "$ref")"
            save_platform=(--platform "$platform")
        fi
        # ${a[@]+"${a[@]}"}: an empty array under `set -u` on bash 3.2 (macOS)
        docker save ${save_platform[@]+"${save_platform[@]}"} -o "$WORK/$role.tar" "$ref"
        kind load image-archive --name "$CLUSTER" "$WORK/$role.tar" >&2
        rm -f "$WORK/$role.tar"
        say "loaded $ref"
        IMAGE_TAGS+=("$role=$tag")
    done
}

image_set_args() {
    local pair
    for pair in "${IMAGE_TAGS[@]}"; do
        printf -- '--set image.%s.tag=%s ' "${pair%%=*}" "${pair#*=}"
    done
    echo
}

install_release() {
    need_tools helm
    local set_args=()
    read -r -a set_args <<<"$(image_set_args)"
    # shellcheck disable=SC2086  # HELM_EXTRA_ARGS is a list of words on purpose
    helm upgrade --install "$RELEASE" charts/chancepay \
        --namespace "$NAMESPACE" --create-namespace \
        "${set_args[@]}" \
        --wait --wait-for-jobs --timeout 10m $HELM_EXTRA_ARGS
}

# Smoke request through a port-forward (which bypasses NetworkPolicies, as an operator's would).
smoke() {
    need_tools kubectl helm curl base64
    local created uuid status key
    # The first API client's key, generated by the chart into its Secret (the API requires one in prod).
    key="$(kubectl -n "$NAMESPACE" get secret "$RELEASE-secrets" -o jsonpath='{.data.api-key}' | base64 -d)"
    [ -n "$key" ] || die "no api-key in Secret $RELEASE-secrets"
    kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE-orchestrator" "$LOCAL_PORT:8000" >/dev/null 2>&1 &
    PF_PID=$!
    for _ in $(seq 1 30); do
        curl -fsS "http://127.0.0.1:$LOCAL_PORT/healthz" >/dev/null 2>&1 && break
        sleep 1
    done
    created="$(curl -fsS -X POST "http://127.0.0.1:$LOCAL_PORT/payments" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' -d '{"cusId":"kind-smoke","amount":"12.50"}')"
    say "created $created"
    uuid="$(printf '%s' "$created" | sed -n 's/.*"uuid" *: *"\([^"]*\)".*/\1/p')"
    status=PENDING
    for _ in $(seq 1 60); do
        status="$(curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$LOCAL_PORT/payments/$uuid" | sed -n 's/.*"status" *: *"\([^"]*\)".*/\1/p')"
        [ "$status" != PENDING ] && break
        sleep 1
    done
    [ "$status" != PENDING ] || die "payment $uuid still PENDING after 60 s"
    say "payment $uuid finalized as $status"
    # NOTES.txt's way to manage API clients: the first one, registered by the migrate Job, is listed.
    kubectl -n "$NAMESPACE" exec "deploy/$RELEASE-orchestrator" -- chancepay clients list | grep -F '"client":"default"' \
        || die "chancepay clients list (kubectl exec) does not list the chart's first client"
    kill "$PF_PID" 2>/dev/null || true
    PF_PID=""

    helm test "$RELEASE" --namespace "$NAMESPACE" --timeout 5m
}

case "${1:-all}" in
    pins)
        print_pins ;;
    images)
        ensure_cluster; build_and_load; image_set_args ;;
    install)
        ensure_cluster; build_and_load; install_release ;;
    smoke)
        smoke ;;
    all)
        ensure_cluster; build_and_load; install_release; smoke
        say "ready. API: kubectl -n $NAMESPACE port-forward svc/$RELEASE-orchestrator 8000:8000" ;;
    *)
        die "usage: $0 [all|pins|images|install|smoke]" ;;
esac
