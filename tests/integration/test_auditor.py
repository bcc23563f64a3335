"""`chancepay auditor`, the online audit, as a real process against the real databases and broker:
0 violations after a real pipeline run with its last pass advancing; each tamper kind the offline
`chancepay audit` catches makes its gauge non-zero with a `[FAILED TO AUDIT]` line naming the uuid,
and the gauge falls back to 0 once the tamper is undone (the violations are re-checked every pass)."""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from collections.abc import Callable

import pytest

from chancepay.core import sql
from chancepay.core.invariants import VIOLATION_KINDS
from tests.support.env import wait_until
from tests.support.invariants import LAST_PASS, UNBALANCED, check_online, next_pass, violations
from tests.support.roles import Role, Stack


@pytest.fixture
def audited(make_stack) -> tuple[Stack, Role]:
    s = make_stack().start()
    accepted = s.pay_many(20, "audited")
    s.wait_final(accepted)
    auditor = s.start_auditor()
    first = wait_until(lambda: auditor.metric(LAST_PASS), 60, what="the first audit pass")
    second = next_pass(auditor)
    assert second > first
    assert violations(auditor) == dict.fromkeys(VIOLATION_KINDS, 0.0)
    assert auditor.metric(UNBALANCED) == 0
    assert not auditor.events("[FAILED TO AUDIT]")
    return s, auditor


def _orphan(s: Stack) -> tuple[str, float, Callable[[], None]]:
    u = str(uuidlib.uuid4())
    s.env.wallet_sql("INSERT INTO inbox (uuid, cus_id, amount, succeed) VALUES (%s, 'ghost', 1.25, 1)", (u,))
    return u, -1.25, lambda: s.env.wallet_sql("DELETE FROM inbox WHERE uuid=%s", (u,))


def _mismatched(s: Stack) -> tuple[str, float, Callable[[], None]]:
    # A request finalized SUCCEEDED that the wallet decided FAILED.
    u = str(uuidlib.uuid4())
    s.env.orch_sql(
        "INSERT INTO request (uuid, cus_id, amount, succeed, finalized_at) VALUES (%s, 'flip', 4.00, 1, NOW(6))", (u,)
    )
    s.env.wallet_sql("INSERT INTO inbox (uuid, cus_id, amount, succeed) VALUES (%s, 'flip', 4.00, 0)", (u,))

    def undo() -> None:
        s.env.wallet_sql("DELETE FROM inbox WHERE uuid=%s", (u,))
        s.env.orch_sql("DELETE FROM request WHERE uuid=%s", (u,))

    return u, 4.0, undo


def _lost(s: Stack) -> tuple[str, float, Callable[[], None]]:
    # Accepted an hour ago, still pending, held by neither the outbox nor the inbox.
    u = str(uuidlib.uuid4())
    s.env.orch_sql(
        "INSERT INTO request (uuid, cus_id, amount, created_at) VALUES (%s, 'lost', 2.00, NOW(6) - INTERVAL 1 HOUR)",
        (u,),
    )
    return u, 0.0, lambda: s.env.orch_sql("DELETE FROM request WHERE uuid=%s", (u,))


def _unexplained_outbox(s: Stack) -> tuple[str, float, Callable[[], None]]:
    # An outbox row an hour old, never tried, no failure recorded (not due, so the scanner leaves it).
    u = str(uuidlib.uuid4())
    s.env.orch_sql(
        "INSERT INTO outbox (uuid, payload, attempts, created_at, next_attempt_at) "
        "VALUES (%s, 'x', 0, NOW(6) - INTERVAL 1 HOUR, NOW(6) + INTERVAL 1 DAY)",
        (u,),
    )
    return u, 0.0, lambda: s.env.orch_sql("DELETE FROM outbox WHERE uuid=%s", (u,))


TAMPERS = {
    "orphan_inbox": _orphan,
    "mismatched": _mismatched,
    "lost": _lost,
    "unexplained_outbox": _unexplained_outbox,
}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_a_tamper_makes_its_kind_non_zero_with_the_uuid_logged_until_undone(audited, kind: str) -> None:
    s, auditor = audited
    u, unbalanced, undo = TAMPERS[kind](s)
    expected = {**dict.fromkeys(VIOLATION_KINDS, 0.0), kind: 1.0}
    wait_until(lambda: violations(auditor) == expected, 30, what=f"{kind} counted: {violations(auditor)}")
    assert auditor.metric(UNBALANCED) == pytest.approx(unbalanced)
    line = auditor.wait_for_event("[FAILED TO AUDIT]", uuid=u)
    assert line["kind"] == kind
    next_pass(auditor)
    assert violations(auditor) == expected  # a lasting violation stays counted, pass after pass
    assert len([e for e in auditor.events("[FAILED TO AUDIT]") if e.get("uuid") == u]) == 1  # logged once
    undo()
    wait_until(lambda: violations(auditor) == dict.fromkeys(VIOLATION_KINDS, 0.0), 30, what="healed")
    assert auditor.metric(UNBALANCED) == 0
    auditor.wait_for_event("audit violation healed", uuid=u)


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_the_fault_tiers_in_process_check_finds_each_tamper_kind(env, kind: str) -> None:
    """tests/support/invariants.py check_online, which every fault scenario's final invariant
    check runs: nothing on clean tables, the tampered uuid with its kind otherwise."""
    assert check_online(env) == {}
    u, unbalanced, undo = TAMPERS[kind](Stack(env))
    found = check_online(env)
    assert list(found) == [u] and found[u].kind == kind and float(found[u].unbalanced) == unbalanced
    undo()
    assert check_online(env) == {}


def _late_orphan(s: Stack) -> tuple[str, str, float, Callable[[], None]]:
    # An inbox row whose transaction commits 20 s after its created_at (a lock wait, an fsync stall).
    u = str(uuidlib.uuid4())
    s.env.wallet_sql(
        "INSERT INTO inbox (uuid, cus_id, amount, succeed, created_at) "
        "VALUES (%s, 'late', 1.50, 1, NOW(6) - INTERVAL 20 SECOND)",
        (u,),
    )
    return u, "orphan_inbox", -1.5, lambda: s.env.wallet_sql("DELETE FROM inbox WHERE uuid=%s", (u,))


def _late_mismatched(s: Stack) -> tuple[str, str, float, Callable[[], None]]:
    # A request committed SUCCEEDED 20 s after its created_at, which the wallet never decided.
    u = str(uuidlib.uuid4())
    s.env.orch_sql(
        "INSERT INTO request (uuid, cus_id, amount, succeed, finalized_at, created_at) "
        "VALUES (%s, 'late', 3.00, 1, NOW(6), NOW(6) - INTERVAL 20 SECOND)",
        (u,),
    )
    return u, "mismatched", 3.0, lambda: s.env.orch_sql("DELETE FROM request WHERE uuid=%s", (u,))


@pytest.mark.parametrize("tamper", [_late_orphan, _late_mismatched], ids=["inbox", "request"])
def test_a_row_committed_long_after_its_created_at_is_still_judged_once(audited, tamper) -> None:
    """Each side's read re-reads an overlap behind the newest row it judged (the server's
    innodb_lock_wait_timeout + a margin): a row appearing after rows created later were audited is
    still judged, and logged once though it is read again every pass while inside the overlap."""
    s, auditor = audited
    s.wait_final(s.pay_many(3, "newer"))  # rows created after the late one's created_at, judged first
    next_pass(auditor)
    u, kind, unbalanced, undo = tamper(s)
    expected = {**dict.fromkeys(VIOLATION_KINDS, 0.0), kind: 1.0}
    wait_until(lambda: violations(auditor) == expected, 30, what=f"late {kind} counted: {violations(auditor)}")
    assert auditor.metric(UNBALANCED) == pytest.approx(unbalanced)
    assert auditor.wait_for_event("[FAILED TO AUDIT]", uuid=u)["kind"] == kind
    next_pass(auditor)
    next_pass(auditor)
    assert len([e for e in auditor.events("[FAILED TO AUDIT]") if e.get("uuid") == u]) == 1
    undo()
    wait_until(lambda: violations(auditor) == dict.fromkeys(VIOLATION_KINDS, 0.0), 30, what="healed")


def test_each_sides_scan_is_a_range_on_its_created_at_index(env) -> None:
    """The pass's new-row reads are range scans of a created_at index (orchestrator v4's
    ix_request_created, wallet v4's ix_inbox_created), never a scan of the table's history."""
    args = (dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1), "", 100)
    for run, statement, index in (
        (env.orch_sql, sql.AUDIT_SCAN_REQUESTS, "ix_request_created"),
        (env.wallet_sql, sql.AUDIT_SCAN_INBOX, "ix_inbox_created"),
    ):
        ((_, _, _, access, _, key, *_),) = run("EXPLAIN " + statement, args)
        assert (access, key) == ("range", index)
