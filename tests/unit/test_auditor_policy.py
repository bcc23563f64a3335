"""auditor/policy.py: the online audit's checkpoint, carry-over and gauges (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from chancepay.auditor import policy
from chancepay.auditor.policy import Finding, Row
from chancepay.core.invariants import VIOLATION_KINDS, InvariantReport

T0 = dt.datetime(2026, 12, 7, 12, 0, 0)
S = dt.timedelta(seconds=1)


def test_a_new_process_starts_the_offline_audits_window_back_less_the_overlap() -> None:
    span = policy.overlap(50)
    assert span == 50 * S + policy.OVERLAP_MARGIN
    checkpoint = policy.start(T0, span)
    assert checkpoint.high == T0 - dt.timedelta(hours=24)
    assert checkpoint.low() == T0 - dt.timedelta(hours=24) - span
    assert checkpoint.judged == {}


def test_the_overlap_behind_the_newest_row_judged_is_read_again_but_judged_rows_are_skipped() -> None:
    checkpoint = policy.Checkpoint(T0, 60 * S).advanced([("a", T0 + 10 * S), ("b", T0 + 10 * S)])
    assert checkpoint.high == T0 + 10 * S and checkpoint.low() == T0 - 50 * S
    # a late commit created before the newest judged row (inside the overlap) is new; a and b are not
    late = ("late", T0 - 40 * S)
    assert checkpoint.unjudged([late, ("a", T0 + 10 * S), ("b", T0 + 10 * S), ("c", T0 + 11 * S)]) == [
        late,
        ("c", T0 + 11 * S),
    ]
    after = checkpoint.advanced([late])
    assert after.high == T0 + 10 * S  # a late row never moves the checkpoint backwards
    assert after.unjudged([late]) == []  # judged once, not again (nor logged again)


def test_judged_uuids_are_forgotten_once_they_fall_out_of_the_overlap() -> None:
    checkpoint = policy.Checkpoint(T0, 60 * S).advanced([("old", T0), ("new", T0 + 30 * S)])
    assert set(checkpoint.judged) == {"old", "new"}
    moved = checkpoint.advanced([("newest", T0 + 61 * S)])
    assert set(moved.judged) == {"new", "newest"}  # "old" is before low() = T0 + 1 s
    assert moved.judged["new"] == T0 + 30 * S


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
