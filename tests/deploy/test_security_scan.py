"""checkov (Kubernetes framework) over the rendered chart, default and with the switches that add
objects; every finding fixed or explained in deploy/checkov-skips.yaml."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import ROOT, render

SKIPS = ROOT / "deploy" / "checkov-skips.yaml"
VARIANTS = {
    "default": {},
    "rabbitmq-cluster": {"rabbitmq": {"replicas": 3}},
    "tls": {"tls": {"enabled": True, "secretName": "chancepay-tls"}},
    "ingress": {"ingress": {"enabled": True, "className": "nginx"}},
}


def checkov() -> str:
    path = os.environ.get("CHANCEPAY_CHECKOV", "")
    if not path or not Path(path).exists():
        pytest.fail(
            "checkov is not installed: `make checkov` installs it (a venv of its own, see the Makefile); "
            "`make test` does that first and sets CHANCEPAY_CHECKOV"
        )
    return path


def scan(tmp_path: Path, values: dict) -> list[tuple[str, str]]:
    rendered = render(values)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered.objects + [h["object"] for h in rendered.hooks], sort_keys=False))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # no network: do not fetch the platform's guideline map
    result = subprocess.run(
        [
            checkov(),
            "-f",
            str(manifest),
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    failed = report["results"]["failed_checks"]
    return sorted({(f["check_id"], f["resource"]) for f in failed})


def _skips() -> list[dict]:
    entries = yaml.safe_load(SKIPS.read_text())
    for e in entries:
        assert e["why"].strip() and re.compile(e["resource"]), e
    return entries


def test_every_finding_is_fixed_or_explained(tmp_path) -> None:
    skips = _skips()
    used: set[int] = set()
    unexplained: list[tuple[str, str, str]] = []
    for name, values in VARIANTS.items():
        for check, resource in scan(tmp_path, values):
            hits = [i for i, e in enumerate(skips) if e["check"] == check and re.search(e["resource"], resource)]
            if hits:
                used.update(hits)
            else:
                unexplained.append((name, check, resource))
    assert not unexplained, "checkov findings neither fixed nor in deploy/checkov-skips.yaml:\n" + "\n".join(
        map(str, unexplained)
    )
    stale = [skips[i]["check"] for i in range(len(skips)) if i not in used]
    assert not stale, f"skip entries that match no finding any more (remove them): {stale}"


def test_the_scan_can_fail(tmp_path) -> None:
    """A privileged container is a finding no skip entry covers."""
    hostile = {
        "containerSecurityContext": {
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
    }
    findings = {check for check, _ in scan(tmp_path, hostile)}
    assert "CKV_K8S_20" in findings  # containers should not run with allowPrivilegeEscalation
