"""The kind workflow (.github/workflows/kind.yaml) is linted here; it runs on GitHub, with Docker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "kind.yaml"


def actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not Path(found).exists():
        pytest.fail("actionlint is not installed: it comes with the test extras (pip install -e '.[test]')")
    return found


def test_workflow_passes_actionlint() -> None:
    # actionlint also runs ShellCheck over every `run:` script when shellcheck is on PATH.
    result = subprocess.run([actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.evnt }}\n")
    result = subprocess.run([actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0 and "evnt" in result.stdout


def test_workflow_runs_the_readmes_commands() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["chart"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make kind-up" in runs, "the README's one command"
    assert "helm lint charts/chancepay" in runs and "ct lint" in runs
    assert "grep -F '[FAILED TO'" in runs
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    readme = (ROOT / "README.md").read_text()
    assert "make kind-up" in readme and ".github/workflows/kind.yaml" in readme
