"""What the ChancePay code reads and serves, found by reading its source (ast), so the chart can
be checked against the code without running it. The live counterpart is test_metrics_live.py."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "services"

# Where each process's code starts (cli.py dispatches to these).
ENTRY_MODULES = {
    "orchestrator": "chancepay.orchestrator.main",
    "scanner": "chancepay.scanner.main",
    "wallet": "chancepay.wallet.main",
    "auditor": "chancepay.auditor.main",
    "migrate": "chancepay.core.schema",
    "reconcile": "chancepay.reconcile",
}
# Settings members that are derived from a field.
DERIVED = {
    "orchestrator_db_url": {"orchestrator_db"},
    "wallet_db_url": {"wallet_db"},
    "require_safe_token": {"env", "internal_token"},
    "require_safe_message_key": {"env", "message_key", "message_key_previous"},
    "message_keys": {"message_key", "message_key_previous"},
    "amqp_url_list": {"amqp_url"},
    "port_for": {"port"},
    "crash_point_set": {"crash_points"},
    "api_auth_required": {"env", "api_auth"},
}
# Read by cli.py / Settings for every process.
COMMON_FIELDS = {"env", "log_level"}
# Fields whose defaults point at 127.0.0.1 or are the public dev token: a cluster must set them.
MUST_SET_IN_CLUSTER = {
    "orchestrator_db",
    "wallet_db",
    "amqp_url",
    "orchestrator_url",
    "wallet_url",
    "internal_token",
    "message_key",
}


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def _imports(path: Path, modname: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("chancepay")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("chancepay"):
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if module_path(f"{base}.{a.name}")}
    return {m for m in found if module_path(m)}


@functools.cache
def closure(entry: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [entry]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(module_path(m), m) - seen)  # type: ignore[arg-type]
    return frozenset(seen)


def _trees(role: str) -> list[ast.AST]:
    return [ast.parse(module_path(m).read_text()) for m in sorted(closure(ENTRY_MODULES[role]))]  # type: ignore[union-attr]


@functools.cache
def fields_read(role: str) -> frozenset[str]:
    """Settings fields a role's code reads (`settings.x`, `self.settings.x`)."""
    from chancepay.core.config import VARIABLES

    fields = {v.field for v in VARIABLES}
    found = set(COMMON_FIELDS)
    for tree in _trees(role):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            owner_name = (
                owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            )
            if owner_name != "settings":
                continue
            if node.attr in fields:
                found.add(node.attr)
            found |= DERIVED.get(node.attr, set())
    return frozenset(found)


@functools.cache
def routes(role: str) -> frozenset[str]:
    """Paths of every starlette Route(...) in a role's code."""
    found = set()
    for tree in _trees(role):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Route"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
    return frozenset(found)


@functools.cache
def cli_subcommands() -> frozenset[str]:
    """Subcommands of the real console script, from `python -m chancepay --help`."""
    out = subprocess.run(
        [sys.executable, "-m", "chancepay", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    ).stdout
    m = re.search(r"\{([a-z,_-]+)\}", out)
    if m:
        return frozenset(m.group(1).split(","))
    # argparse with metavar: the subcommands are listed one per line under the positional args
    return frozenset(re.findall(r"^\s{4}([a-z][a-z_-]+)\s{2,}", out, flags=re.M))


def env_to_field() -> dict[str, str]:
    from chancepay.core.config import VARIABLES

    return {v.env: v.field for v in VARIABLES}
