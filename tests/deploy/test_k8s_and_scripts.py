"""k8s/ (plain manifests rendered from the chart, kind config) and the kind-up/-down scripts."""

from __future__ import annotations

import importlib.util
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
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for d in docs if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"] for e in c["env"] if "valueFrom" in e}
    assert refs == {"chancepay-secrets"}
    assert not [d for d in docs if d["kind"] == "Pod"]  # the helm test pod is not a plain manifest


def test_kind_cluster_config():
    cfg = yaml.safe_load((ROOT / "k8s" / "kind-cluster.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["name"] == "chancepay"
    assert all(n["image"].startswith("kindest/node:v1.") for n in cfg["nodes"])


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
    for needed in ("kind create cluster", "k8s/kind-cluster.yaml", 'docker build -f "Dockerfile.$role"',
                   "kind load docker-image", "helm upgrade --install", "charts/chancepay", "--wait",
                   "/payments", "helm test"):
        assert needed in text, needed
    mk = (ROOT / "mk" / "deploy.mk").read_text()
    for target in ("kind-up:", "kind-down:", "render-k8s:", "test-tools:"):
        assert target in mk, target
