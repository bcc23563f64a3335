"""Back-off schedules, percentiles, the invariant comparison and the architecture rules."""

from __future__ import annotations

import ast
import random
from pathlib import Path

from chancepay.audit import InvariantReport, compare
from chancepay.load import percentile
from chancepay.scanner.scanner import retry_delay
from chancepay.wallet.consumer import backoff_delays

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"


def test_scanner_retry_delay_is_capped_exponential() -> None:
    assert [retry_delay(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 2, 4, 8, 60, 60, 60]


def test_callback_backoff_has_full_jitter_under_the_cap() -> None:
    rng = random.Random(7)
    delays = backoff_delays(6, base=0.2, cap=1.0, rng=rng)
    assert len(delays) == 5
    caps = [0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps))
    assert len(set(delays)) == 5, "jitter spreads retries of many wallets apart"
    assert backoff_delays(1, base=0.2) == []


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
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_core_imports_no_role_and_no_role_imports_another() -> None:
    roles = ("orchestrator", "scanner", "wallet")
    for path in (PACKAGE / "core").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(tuple(f"chancepay.{r}" for r in roles))}
        assert not bad, f"{path.name} (core) imports {bad}"
    for role in roles:
        others = tuple(f"chancepay.{r}" for r in roles if r != role)
        for path in (PACKAGE / role).rglob("*.py"):
            bad = {m for m in _imports(path) if m.startswith(others)}
            assert not bad, f"{role}/{path.name} imports {bad}"


def test_all_sql_lives_in_core_sql() -> None:
    keywords = ("INSERT INTO", "UPDATE request", "UPDATE outbox", "UPDATE inbox", "DELETE FROM")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "sql.py":
            continue
        text = path.read_text()
        assert not [k for k in keywords if k in text], f"write SQL outside core/sql.py in {path}"
