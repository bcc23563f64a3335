"""auditor/policy.py: the online audit's checkpoint, carry-over and gauges (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from chancepay.auditor import policy
from chancepay.auditor.policy import Finding, Row
from chancepay.core.invariants import VIOLATION_KINDS, InvariantReport

T0 = dt.datetime(2026, 12, 7, 12, 0, 0)
S = dt.timedelta(seconds=1)


def test_a_new_process_starts_the_offline_audits_window_back() -> None:
    assert policy.start(T0) == T0 - dt.timedelta(hours=24)


def test_a_caught_up_side_rereads_only_the_settle_time_before_the_end_of_its_window() -> None:
    assert (
        policy.next_since(T0, T0 + 60 * S, read=3, limit=100, last_created=T0 + 59 * S) == T0 + 60 * S - policy.SETTLE
    )
    # never backwards, even when the window was shorter than the settle time
    assert policy.next_since(T0, T0 + S, read=0, limit=100, last_created=None) == T0


def test_a_full_batch_goes_on_from_its_last_row_and_steps_past_an_instant_holding_a_whole_batch() -> None:
    assert policy.next_since(T0, T0 + 60 * S, read=100, limit=100, last_created=T0 + 7 * S) == T0 + 7 * S
    assert policy.next_since(T0, T0 + 60 * S, read=100, limit=100, last_created=T0) == T0 + policy.ONE_TICK


def test_unbalanced_is_succeeded_request_minus_succeeded_inbox_and_zero_while_pending() -> None:
    ten, yes, no = Decimal("10.00"), True, False
    assert policy.unbalanced(Row(yes, ten), Row(yes, ten)) == 0
    assert policy.unbalanced(Row(no, ten), Row(no, ten)) == 0
    assert policy.unbalanced(Row(None, ten), Row(yes, ten)) == 0  # awaiting its mirror
    assert policy.unbalanced(Row(yes, ten), None) == ten  # paid, never deducted
    assert policy.unbalanced(Row(yes, ten), Row(no, ten)) == ten
    assert policy.unbalanced(None, Row(yes, ten)) == -ten  # an orphan deduction
    assert policy.unbalanced(Row(yes, ten), Row(yes, Decimal("12.00"))) == Decimal("-2.00")


def test_findings_name_each_violating_or_unbalanced_uuid_and_nothing_else() -> None:
    report = InvariantReport(orphan_inbox=["o"], lost=["l"], awaiting_mirror=["a"])
    requests = {"l": Row(None, Decimal(2)), "a": Row(None, Decimal(1)), "ok": Row(True, Decimal(3))}
    inbox = {"o": Row(True, Decimal(5)), "a": Row(True, Decimal(1)), "ok": Row(True, Decimal(3))}
    found = policy.findings(report, requests, inbox, {"o", "l", "a", "ok"})
    assert found == {"o": Finding("orphan_inbox", Decimal(-5)), "l": Finding("lost")}
    amount_only = policy.findings(InvariantReport(), {"x": Row(True, Decimal(3))}, {"x": Row(True, Decimal(2))}, {"x"})
    assert amount_only == {"x": Finding(None, Decimal(1))}


def test_pending_requests_are_watched_until_final() -> None:
    assert policy.watch({"p": Row(None, Decimal(1)), "f": Row(False, Decimal(1))}) == {"p"}


def test_gauges_count_every_kind_and_sum_the_unbalanced_amounts() -> None:
    counts, amount = policy.gauges(
        {
            "a": Finding("lost"),
            "b": Finding("lost"),
            "c": Finding("orphan_inbox", Decimal(-1)),
            "d": Finding(None, Decimal(3)),
        }
    )
    assert counts == {**dict.fromkeys(VIOLATION_KINDS, 0), "lost": 2, "orphan_inbox": 1}
    assert amount == Decimal(2)
    assert policy.gauges({}) == (dict.fromkeys(VIOLATION_KINDS, 0), Decimal(0))


def test_a_lasting_violation_is_logged_once_and_a_changed_one_again() -> None:
    before = {"a": Finding("lost")}
    assert policy.newly(before, {"a": Finding("lost")}) == {}
    assert policy.newly(before, {"a": Finding("mismatched")}) == {"a": Finding("mismatched")}
    assert policy.newly(before, {"a": Finding("lost"), "b": Finding("orphan_inbox")}) == {"b": Finding("orphan_inbox")}
