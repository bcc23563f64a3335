"""`make check`, the fast gate, run exactly as the README shows it: ruff and `ruff format --check`
over services, tests and bench, `mypy --strict` over services, and the unit tier, all passing; and
the static checks it runs would catch a bad line.

Here rather than in tests/unit: it runs the unit tier itself (and ruff and mypy as subprocesses),
so it belongs beside the other tests of documented commands (test_readme_quickstart.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import one_pass

ROOT = Path(__file__).resolve().parents[2]
pytestmark = one_pass(
    "debian12", "make check needs no server and is the same in both passes: the debian12 pass runs it"
)


def readme_command(verb: str) -> str:
    """The line of a ```sh block of the README that runs `verb` (its trailing comment dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    found = [line for line in lines if line == verb or line.startswith(verb + " ")]
    assert found, f"the README shows no `{verb}` in a sh block"
    return found[0]


def a_developers_shell() -> dict[str, str]:
    """The environment of a shell a developer types the command in: none of the outer make's or
    pytest's own variables (when the suite itself runs under `make test`)."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CHANCEPAY_")}


def test_make_check_runs_as_the_readme_shows_it() -> None:
    command = readme_command("make check")
    assert command == "make check"
    run = subprocess.run(
        command, shell=True, cwd=ROOT, env=a_developers_shell(), capture_output=True, text=True, timeout=600
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    for step in (
        "ruff check services tests bench",
        "ruff format --check services tests bench",
        "mypy --strict services/chancepay",
        "pytest -q -p no:cacheprovider tests/unit",
    ):
        assert step in out, f"make check did not run `{step}`:\n{out[-4000:]}"
    assert re.search(r"\d+ passed", out), out[-4000:]


def _tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", name, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_bad_line_fails_the_static_checks(tmp_path: Path) -> None:
    """On a copy of services/ with a planted module: ruff finds its undefined name, `ruff format
    --check` its unformatted line, mypy (strict) its untyped function."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "services" / "chancepay" / "core" / "planted.py"
    planted.write_text('"""Planted."""\n\n\ndef broken(x):\n    return undefined_name + "x"\n\n\nY = [1,2]\n')
    ruff = _tool("ruff", "check", "services/chancepay/core/planted.py", cwd=tmp_path)
    assert ruff.returncode != 0 and "F821" in ruff.stdout, ruff.stdout + ruff.stderr
    fmt = _tool("ruff", "format", "--check", "services/chancepay/core/planted.py", cwd=tmp_path)
    assert fmt.returncode != 0 and "planted.py" in fmt.stdout + fmt.stderr, fmt.stdout + fmt.stderr
    mypy = _tool("mypy", "services/chancepay", cwd=tmp_path)
    assert mypy.returncode != 0 and "planted.py" in mypy.stdout, mypy.stdout + mypy.stderr
    assert "no-untyped-def" in mypy.stdout, "mypy runs --strict (pyproject.toml: strict = true)"


def _can_unshare_the_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0


def test_the_unit_tier_passes_where_no_server_is_reachable() -> None:
    """Beyond the socket guard: the unit tier in a network namespace of its own (no interface up,
    so MariaDB and RabbitMQ cannot be reached over TCP, while they keep serving the other tests),
    with no CHANCEPAY_TEST_SERVERS."""
    if not _can_unshare_the_network():
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    env = {k: v for k, v in a_developers_shell().items() if k != "CHANCEPAY_TEST_SERVERS"}
    unit_tier = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"]
    run = subprocess.run(["unshare", "-n", *unit_tier], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-8000:]
