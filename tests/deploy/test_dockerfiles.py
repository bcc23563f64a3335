"""Static checks of Dockerfile.{orchestrator,scanner,wallet} (a lint: tests/chart/test_played.py
builds and runs them): COPY sources exist and survive .dockerignore, the base is pinned,
dependencies come before the code, the user is not root, and CMD runs a real `chancepay`
subcommand."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from chancepay.core.config import ROLE_PORTS
from tests.deploy import codeinfo

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("orchestrator", "scanner", "wallet")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "*/")) for p in prefixes):
            excluded = not negate
    return excluded


def resolve_args(path: Path) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^ARG (\w+)=(\S+)", path.read_text(), re.M)}


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile(role):
    path = ROOT / f"Dockerfile.{role}"
    ins = instructions(path)
    args = resolve_args(path)

    # a pinned base: an exact x.y.z patch tag of python 3.11 slim on Debian 12 (the Debian and Python
    # the suite builds the same file from), or a digest
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for spec in froms:
        image = spec.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image

    # COPY sources exist in the build context and are not excluded by .dockerignore
    copies = [a for w, a in ins if w == "COPY"]
    for c in copies:
        parts = [p for p in c.split() if not p.startswith("--")]
        if "--from=" in c:
            continue
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignore_excludes(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
    # dependencies are installed from pyproject.toml before the code is copied (layer caching)
    order = [a for w, a in ins if w in ("COPY", "RUN")]
    i_pyproject = next(i for i, a in enumerate(order) if a.startswith("pyproject.toml"))
    i_deps = next(i for i, a in enumerate(order) if "pip install" in a and "requirements" in a)
    i_code = next(i for i, a in enumerate(order) if a.startswith("services/"))
    assert i_pyproject < i_deps < i_code

    # a non-root user in the final stage, numeric and matching the chart's runAsUser
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1] == "10001:10001"

    # CMD is the exec form ["chancepay", "<role>"], and that role is a real subcommand
    cmds = [a for w, a in final if w == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])
    assert cmd == ["chancepay", role]
    assert role in codeinfo.cli_subcommands()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["chancepay"] == "chancepay.cli:main"
    assert [a for w, a in final if w == "EXPOSE"] == [str(ROLE_PORTS[role])]


def test_role_images_differ_only_in_role_and_port():
    def normalized(role):
        text = repr(instructions(ROOT / f"Dockerfile.{role}"))
        return text.replace(role, "ROLE").replace(str(ROLE_PORTS[role]), "PORT")

    assert normalized("orchestrator") == normalized("scanner") == normalized("wallet")


def test_dockerignore_keeps_the_context_small():
    for kept in ("pyproject.toml", "README.md", "services/chancepay/cli.py"):
        assert not dockerignore_excludes(kept), kept
    for dropped in (
        ".git",
        ".venv",
        "tests/conftest.py",
        "charts/chancepay/Chart.yaml",
        "services/chancepay/__pycache__",
    ):
        assert dockerignore_excludes(dropped), dropped
