"""k8s/ (plain manifests rendered from the chart, kind config) and the kind-up/-down scripts."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MY_SCRIPTS = ("scripts/kind-up.sh", "scripts/kind-down.sh", "scripts/install-test-tools.sh", "scripts/plain-secret.sh")


def render_k8s_module():
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render-k8s.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_k8s_manifests_match_the_chart():
    """Fails when k8s/manifests/ or the deploy/ copies drift from the chart: run `make render-k8s`."""
    mod = render_k8s_module()
    expected = mod.expected_files()
    on_disk = set(mod.MANIFESTS.glob("*.yaml"))
    assert on_disk == {p for p in expected if p.parent == mod.MANIFESTS}, "run `make render-k8s`"
    drifted = [str(p.relative_to(ROOT)) for p, text in expected.items() if p.read_text() != text]
    assert not drifted, f"out of date, run `make render-k8s`: {drifted}"


def test_drift_is_detected(tmp_path, monkeypatch):
    mod = render_k8s_module()
    copy = tmp_path / "manifests"
    shutil.copytree(mod.MANIFESTS, copy)
    victim = sorted(copy.glob("*deployment-chancepay-wallet.yaml"))[0]
    victim.write_text(victim.read_text().replace("replicas: 2", "replicas: 3"))
    monkeypatch.setattr(mod, "MANIFESTS", copy)
    monkeypatch.setattr(mod, "COPIES", {})
    expected = {copy / p.name: t for p, t in mod.expected_files().items()}
    assert expected[victim] != victim.read_text()


def test_plain_manifests_are_valid_and_use_an_existing_secret():
    docs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "k8s" / "manifests").glob("*.yaml"))]
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, "1.33", strict=True)
    assert not [d for d in docs if d["kind"] == "Secret"]  # secrets are never committed
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c["env"]
        if "valueFrom" in e
    }
    assert refs == {"chancepay-secrets"}
    assert not [d for d in docs if d["kind"] == "Pod"]  # the helm test pod is not a plain manifest


def test_kind_cluster_config():
    cfg = yaml.safe_load((ROOT / "k8s" / "kind-cluster.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["name"] == "chancepay"
    # by the digest kind's release notes publish (the pins: tests/deploy/test_workflow.py)
    assert all(re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", n["image"]) for n in cfg["nodes"])


@pytest.mark.parametrize("script", MY_SCRIPTS)
def test_scripts_are_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.fail("shellcheck is not installed: run `make test-tools` (scripts/install-test-tools.sh)")
    r = subprocess.run([shellcheck, "--severity=style", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_kind_up_uses_the_repository_artefacts():
    text = (ROOT / "scripts" / "kind-up.sh").read_text()
    for role in ("orchestrator", "scanner", "wallet"):
        assert (ROOT / f"Dockerfile.{role}").exists()
    for needed in (
        "kind create cluster",
        "k8s/kind-cluster.yaml",
        'docker build -f "Dockerfile.$role"',
        "docker save",
        "kind load image-archive",
        "helm upgrade --install",
        "charts/chancepay",
        "--wait",
        "/payments",
        "helm test",
    ):
        assert needed in text, needed
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "kind load docker-image" not in code  # fails under Docker 29's containerd image store (kind#3795)
    mk = (ROOT / "mk" / "deploy.mk").read_text()
    for target in ("kind-up:", "kind-down:", "render-k8s:", "test-tools:"):
        assert target in mk, target


# --- scripts/kind-up.sh with stand-in docker, kind, kubectl and helm (no Docker here) ------------

STUBS = {
    "docker": r"""#!/bin/bash
echo "docker $*" >> "$STUB_LOG"
case "$1" in
  build)
    while [ $# -gt 0 ]; do
      case "$1" in
        --iidfile) shift; iidfile="$1" ;;
        -f) shift; role="${1#Dockerfile.}" ;;
      esac
      shift
    done
    var="STUB_IID_$role"; printf 'sha256:%s' "${!var:-$STUB_IID}" > "$iidfile" ;;
  save)
    if [ "$2" = --help ]; then echo "      --platform string   Save only the given platform"; exit 0; fi
    while [ $# -gt 0 ]; do [ "$1" = -o ] && { shift; : > "$1"; }; shift; done ;;
  image) echo "linux/amd64" ;;
esac
""",
    "kind": r"""#!/bin/bash
echo "kind $*" >> "$STUB_LOG"
case "$1 $2" in
  "version "*) echo "kind $STUB_KIND_VERSION go1.24.6 linux/amd64" ;;
  "get clusters") echo chancepay ;;
  "load image-archive") [ -f "${*: -1}" ] || { echo "no archive ${*: -1}" >&2; exit 1; } ;;
esac
""",
    "kubectl": r"""#!/bin/bash
echo "kubectl $*" >> "$STUB_LOG"
if [ "$1" = version ]; then printf 'Client Version: %s\nKustomize Version: v5.6.0\n' "$STUB_KUBECTL_VERSION"; fi
""",
    "helm": """#!/bin/bash\necho "helm $*" >> "$STUB_LOG"\n""",
}


def run_kind_up(tmp_path, mode: str, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "STUB_KIND_VERSION": "v0.30.0",
        "STUB_KUBECTL_VERSION": "v1.33.4",
        "STUB_IID": "ab" * 32,
    }
    full_env.pop("TAG", None)
    full_env.update(env)
    result = subprocess.run(
        ["bash", "scripts/kind-up.sh", mode], cwd=ROOT, capture_output=True, text=True, timeout=60, env=full_env
    )
    return result, log.read_text()


def pinned() -> dict[str, str]:
    out = subprocess.run(
        ["bash", "scripts/kind-up.sh", "pins"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_kind_up_refuses_a_kind_older_than_v0_27(tmp_path):
    result, calls = run_kind_up(tmp_path, "images", STUB_KIND_VERSION="v0.26.0", ALLOW_UNPINNED="1")
    assert result.returncode != 0 and "v0.27.0" in result.stderr and "kind#3853" in result.stderr
    assert "docker build" not in calls and "kind create" not in calls


def test_kind_up_checks_kind_and_kubectl_against_the_pins(tmp_path):
    assert pinned()["kind"] == "v0.30.0" and pinned()["kubectl"] == "v1.33.4"  # what the stubs report
    other, _ = run_kind_up(tmp_path, "images", STUB_KIND_VERSION="v0.31.0")
    assert other.returncode != 0 and "pinned v0.30.0" in other.stderr
    allowed, _ = run_kind_up(tmp_path, "images", STUB_KIND_VERSION="v0.31.0", ALLOW_UNPINNED="1")
    assert allowed.returncode == 0 and "warning" in allowed.stderr, allowed.stderr
    skewed, _ = run_kind_up(tmp_path, "images", STUB_KUBECTL_VERSION="v1.31.4")
    assert skewed.returncode != 0 and "more than one minor" in skewed.stderr
    near, _ = run_kind_up(tmp_path, "images", STUB_KUBECTL_VERSION="v1.34.0")
    assert near.returncode == 0, near.stderr


def test_kind_up_tags_each_build_and_loads_archives(tmp_path):
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    first, calls = run_kind_up(tmp_path, "images")
    assert first.returncode == 0, first.stderr
    tag = f"{commit}-{'ab' * 6}"
    assert first.stdout.split() == [
        w for role in ("orchestrator", "scanner", "wallet") for w in ("--set", f"image.{role}.tag={tag}")
    ]
    for role in ("orchestrator", "scanner", "wallet"):
        assert "docker save --platform linux/amd64 -o" in calls and f"chancepay-{role}:{tag}" in calls
    assert calls.count("kind load image-archive --name chancepay") == 3
    assert "load docker-image" not in calls

    same, _ = run_kind_up(tmp_path, "images")
    assert same.stdout == first.stdout  # nothing changed: same tags, the pods stay
    rebuilt, _ = run_kind_up(tmp_path, "images", STUB_IID_wallet="cd" * 32)
    assert f"image.wallet.tag={commit}-{'cd' * 6}" in rebuilt.stdout  # a changed image: a new tag rolls it
    assert f"image.orchestrator.tag={tag}" in rebuilt.stdout


def test_kind_up_installs_the_tags_it_loaded(tmp_path):
    result, calls = run_kind_up(tmp_path, "install", TAG="mine")
    assert result.returncode == 0, result.stderr
    helm = [c for c in calls.splitlines() if c.startswith("helm upgrade --install")]
    assert len(helm) == 1
    for role in ("orchestrator", "scanner", "wallet"):
        assert f"--set image.{role}.tag=mine" in helm[0]
    assert "--wait --wait-for-jobs" in helm[0]
