"""One home for SQL: every statement of the product is in core/sql.py (the benchmark's and the test
suite's in bench/sql.py), and the guard that says so would catch a stray one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"


SQL_START = re.compile(
    r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|TRUNCATE|RENAME|GRANT|REVOKE|SET|SHOW|USE|"
    r"CALL|WITH|LOCK|UNLOCK|FLUSH|KILL|BEGIN|COMMIT|ROLLBACK|START|EXPLAIN|DESCRIBE)\s",
    re.IGNORECASE,
)


def _sql_literals(path: Path) -> list[tuple[int, str]]:
    """String literals (f-strings included) that begin like an SQL statement, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
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
    outside = {
        f"{p.relative_to(PACKAGE.parents[1])}:{line}": text
        for root in roots
        for p in root.rglob("*.py")
        if p not in (PACKAGE / "core" / "sql.py", roots[1] / "sql.py")
        for line, text in _sql_literals(p)
    }
    assert not outside, f"SQL outside core/sql.py (the product's) and bench/sql.py (bench's and tests'): {outside}"


def test_the_sql_guard_would_catch_a_statement(tmp_path: Path) -> None:
    planted = tmp_path / "x.py"
    planted.write_text(
        '"""SELECT in a docstring is prose."""\nq = "SELECT 1"\nr = f"DELETE FROM {t}"\n'
        'def f():\n    "UPDATE docs"\n    return "update me later"\n'
    )
    assert [line for line, _ in _sql_literals(planted)] == [2, 3]
