"""audit.py: the invariant comparison behind `chancepay audit` (the contract's invariants)."""

from __future__ import annotations

from chancepay.audit import InvariantReport, compare


def test_invariant_comparison() -> None:
    report = InvariantReport()
    requests = {"a": True, "b": None, "c": False, "d": True, "e": None}
    inbox = {"a": True, "b": True, "c": True, "x": False, "e": None}
    compare(requests, inbox, report)
    assert report.orphan_inbox == ["x"]  # inbox row without a request (invariant 6)
    assert sorted(report.mismatched) == ["c", "d"]  # differs (4); final without any inbox row
    assert report.awaiting_mirror == ["b"]  # heals by callback or reconcile
    assert report.violations == 3 and not report.as_json()["ok"]
