"""The shape the code keeps: no function in services/ is longer than 50 lines (issue 23), so each
one can be read on one screen. A long function is split by what it does, not by line count."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"
MAX_LINES = 50


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, length in lines incl. decorators and docstring) of each longer function."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    length = (child.end_lineno or child.lineno) - first + 1
                    if length > limit:
                        found.append((name, length))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_no_function_is_longer_than_fifty_lines() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{name} ({length} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, length in long_functions(path.read_text())
    ]
    assert not offenders, f"functions over {MAX_LINES} lines: {offenders}"


def test_the_check_sees_a_long_function_nested_in_a_class() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"class A:\n    def short(self) -> None:\n        pass\n\n    def long(self) -> None:\n    {body}\n"
    source = source.replace("\n    x", "\n        x")
    assert long_functions(source) == [("A.long", MAX_LINES + 1)]
    assert long_functions(source, limit=MAX_LINES + 1) == []
