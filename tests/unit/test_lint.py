"""`make lint` as part of `make test`: ruff and mypy over services/ are clean, and would say so
if they were not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", name, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_services_pass_ruff_and_mypy() -> None:
    ruff = _tool("ruff", "check", "services/")
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = _tool("mypy", "services/chancepay")
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_a_bad_line_fails_the_lint(tmp_path) -> None:
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "services" / "chancepay" / "core" / "backoff.py"
    bad.write_text(bad.read_text() + "\n\ndef broken() -> int:\n    return undefined_name + 'x'\n")
    ruff = _tool("ruff", "check", "services/", cwd=tmp_path)
    assert ruff.returncode != 0 and "F821" in ruff.stdout
    mypy = _tool("mypy", "services/chancepay", cwd=tmp_path)
    assert mypy.returncode != 0 and "backoff.py" in mypy.stdout
