"""Back-off schedules, percentiles, the invariant comparison and the architecture rules."""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from chancepay.audit import InvariantReport, compare
from chancepay.load import percentile
from chancepay.scanner.policy import retry_delay
from chancepay.wallet.policy import callback_delays

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"


def test_scanner_retry_delay_is_capped_exponential() -> None:
    assert [retry_delay(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 2, 4, 8, 60, 60, 60]


def test_callback_backoff_has_full_jitter_under_the_cap() -> None:
    rng = random.Random(7)
    delays = callback_delays(6, base=0.2, cap=1.0, rng=rng)
    assert len(delays) == 5
    caps = [0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps))
    assert len(set(delays)) == 5, "jitter spreads retries of many wallets apart"
    assert callback_delays(1, base=0.2) == []


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


def test_invariant_comparison() -> None:
    report = InvariantReport()
    requests = {"a": True, "b": None, "c": False, "d": True, "e": None}
    inbox = {"a": True, "b": True, "c": True, "x": False, "e": None}
    compare(requests, inbox, report)
    assert report.orphan_inbox == ["x"]  # inbox row without a request (invariant 6)
    assert sorted(report.mismatched) == ["c", "d"]  # differs (4); final without any inbox row
    assert report.awaiting_mirror == ["b"]  # heals by callback or reconcile
    assert report.violations == 3 and not report.as_json()["ok"]


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


ROLES = ("orchestrator", "scanner", "wallet")
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
            bad = {m for m in imports if m.startswith(roles + tuple(t for t in tools if t != f"chancepay.{path.stem}"))
                   and m != "chancepay.audit"}  # load reports with audit's checker
        else:
            assert path.name in ("cli.py", "__init__.py", "__main__.py"), f"{path}: a role, a tool or core?"
            bad = set()
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
    for path in (PACKAGE.parents[1] / "bench").rglob("*.py"):
        bad = {m for m in _imports(path) if m == "tests" or m.startswith("tests.")}
        assert not bad, f"{path.name}: bench/ must not depend on tests/ ({bad})"


SQL_START = re.compile(
    r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|TRUNCATE|RENAME|GRANT|REVOKE|SET|SHOW|USE|"
    r"CALL|WITH|LOCK|UNLOCK|FLUSH|KILL|BEGIN|COMMIT|ROLLBACK|START|EXPLAIN|DESCRIBE)\s", re.IGNORECASE)


def _sql_literals(path: Path) -> list[tuple[int, str]]:
    """String literals (f-strings included) that begin like an SQL statement, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | parts:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
        else:
            continue
        # An SQL statement is upper case by this code base's convention; prose is not.
        if SQL_START.match(text) and text.split()[0].isupper():
            found.append((node.lineno, text.strip()[:60]))
    return found


def test_every_sql_statement_lives_in_core_sql() -> None:
    roots = [PACKAGE, PACKAGE.parents[1] / "bench"]
    outside = {f"{p.relative_to(PACKAGE.parents[1])}:{line}": text for root in roots for p in root.rglob("*.py")
               if p not in (PACKAGE / "core" / "sql.py", roots[1] / "sql.py") for line, text in _sql_literals(p)}
    assert not outside, f"SQL outside core/sql.py (the product's) and bench/sql.py (bench's and tests'): {outside}"


def test_the_sql_guard_would_catch_a_statement(tmp_path: Path) -> None:
    planted = tmp_path / "x.py"
    planted.write_text('"""SELECT in a docstring is prose."""\nq = "SELECT 1"\nr = f"DELETE FROM {t}"\n'
                       'def f():\n    "UPDATE docs"\n    return "update me later"\n')
    assert [line for line, _ in _sql_literals(planted)] == [2, 3]


def test_every_subcommand_has_an_entry_in_the_dispatch_table() -> None:
    from chancepay import cli

    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)
    # report commands print JSON on stdout, so their logs go to stderr
    assert {c for c, (_, report) in cli.COMMANDS.items() if report} == {"audit", "load", "outbox", "dlq", "trace"}
