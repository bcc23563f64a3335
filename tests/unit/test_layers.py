"""The package's layers: who may import whom (core, roles, tools, cli; bench/ apart from tests/)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; a relative import is reported as ".name")."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


ROLES = ("orchestrator", "scanner", "wallet", "auditor")


# Tools: operator and test commands beside the roles. They may use core, never a role's insides.
TOOLS = ("audit", "load", "ops", "reconcile", "devrun")


def test_layers() -> None:
    """core imports no role and no tool; a role imports core and itself only; a tool imports core
    only; cli.py (the dispatcher) may import anything; no relative imports anywhere; bench/ does
    not depend on tests/."""
    roles = tuple(f"chancepay.{r}" for r in ROLES)
    tools = tuple(f"chancepay.{t}" for t in TOOLS)
    for path in PACKAGE.rglob("*.py"):
        imports = _imports(path)
        relative = {m for m in imports if m.startswith(".")}
        assert not relative, f"{path} uses relative imports {relative}"
        part = path.relative_to(PACKAGE).parts
        if part[0] == "core":
            bad = {m for m in imports if m.startswith(roles + tools)}
        elif part[0] in ROLES:
            bad = {m for m in imports if m.startswith(roles + tools) and not m.startswith(f"chancepay.{part[0]}")}
        elif path.stem in TOOLS:
            bad = {
                m
                for m in imports
                if m.startswith(roles + tuple(t for t in tools if t != f"chancepay.{path.stem}"))
                and m != "chancepay.audit"
            }  # load reports with audit's checker
        else:
            assert path.name in ("cli.py", "__init__.py", "__main__.py"), f"{path}: a role, a tool or core?"
            bad = set()
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
    for path in (PACKAGE.parents[1] / "bench").rglob("*.py"):
        bad = {m for m in _imports(path) if m == "tests" or m.startswith("tests.")}
        assert not bad, f"{path.name}: bench/ must not depend on tests/ ({bad})"


# An operator's command (migrate, audit, dlq, outbox, trace, clients) is run by hand, twenty times
# in a row, and by every test that sets up a database: it must not pay for the HTTP server and client
# the roles import (uvicorn + aiohttp took ~0.5 s of each command's ~0.9 s start).
ROLE_ONLY_PACKAGES = ("uvicorn", "aiohttp", "starlette")
OPERATOR_COMMAND_MODULES = ("chancepay.core.schema", "chancepay.ops", "chancepay.audit", "chancepay.core.clients")


def test_operator_commands_do_not_import_the_roles_http_stack() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, chancepay.cli, " + ", ".join(OPERATOR_COMMAND_MODULES) + "\n"
        f"print(sorted(m for m in {ROLE_ONLY_PACKAGES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
