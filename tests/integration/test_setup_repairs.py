"""Set-up that repairs itself (issue 20): every venv step of `make run` and `make test` checks its
marker first and writes it last, so a step interrupted half-way (here: a venv left without pip, as
a `make test` interrupted while it created `.venv-test` leaves it) is completed by the next run
instead of failing every later one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import one_pass

ROOT = Path(__file__).resolve().parents[2]
PYTHON312 = subprocess.run(
    [str(ROOT / "scripts" / "find-python.sh"), "3.12"], capture_output=True, text=True
).stdout.strip()
pytestmark = one_pass("debian12", "one pass is enough: the Makefile does not depend on the servers")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("target, variable", [("test-venv", "TEST_VENV"), ("venv", "VENV")])
def test_a_venv_left_without_pip_is_repaired_by_the_next_run(tmp_path, target: str, variable: str) -> None:
    if not PYTHON312:
        pytest.skip("no Python 3.12 (scripts/find-python.sh 3.12) to make the half-made venv with")
    venv = tmp_path / "venv"
    # What an interrupted `python -m venv` leaves: an interpreter, no pip, no marker.
    subprocess.run([PYTHON312, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True).returncode != 0
    first = make(target, f"{variable}={venv}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (venv / ".installed").exists(), "the marker is written last"
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import chancepay.cli"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    again = make(target, f"{variable}={venv}")
    assert again.returncode == 0 and "pip install" not in again.stdout, "a complete venv is not redone"
