"""scanner/policy.py: the scanner's decisions, apart from I/O: what each publish result means, and
the back-off of a row that keeps failing."""

from __future__ import annotations

from typing import Any

import aiormq.exceptions
from pamqp import commands as spec

from chancepay.scanner.policy import OutboxRow, next_idle_sleep, retry_delay, sort_results


def test_scanner_sorts_publish_results() -> None:
    rows = [OutboxRow(f"u{i}", b"{}", 0) for i in range(5)]
    results: list[Any] = [
        spec.Basic.Ack(),
        aiormq.exceptions.DeliveryError(None, spec.Basic.Nack()),
        TimeoutError(),
        ConnectionResetError(),
        object(),
    ]
    acked, failures = sort_results(rows, results)
    assert acked == ["u0"]
    assert [(f.row.uuid, f.reason) for f in failures] == [
        ("u1", "nack"),
        ("u2", "timeout"),
        ("u3", "connection"),
        ("u4", "returned"),
    ]


def test_scanner_retry_delay_is_capped_exponential() -> None:
    assert [retry_delay(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 2, 4, 8, 60, 60, 60]


def test_scanner_idle_sleep_adapts_between_the_poll_interval_and_the_cap() -> None:
    base, cap = 0.02, 0.1
    assert next_idle_sleep(base, 200, 200, base, cap) == 0.0  # a full batch: poll again at once
    sleeps, current = [], base
    for _ in range(5):  # empty polls: doubling, capped
        current = next_idle_sleep(current, 0, 200, base, cap)
        sleeps.append(current)
    assert sleeps == [0.04, 0.08, 0.1, 0.1, 0.1]
    assert next_idle_sleep(0.1, 3, 200, base, cap) == 0.05  # found rows: halves
    assert next_idle_sleep(0.03, 3, 200, base, cap) == base  # never below the poll interval
    assert next_idle_sleep(0.0, 0, 200, base, cap) == 0.04  # after a full batch, from the base
    # a cap at or below the poll interval is the fixed interval of old
    assert [next_idle_sleep(base, n, 200, base, base) for n in (0, 5)] == [base, base]
    assert next_idle_sleep(base, 0, 200, base, 0.0) == base


def test_scanner_rests_until_the_next_nudge_after_a_nudged_poll() -> None:
    base, cap = 0.02, 1.0
    assert next_idle_sleep(base, 3, 200, base, cap, nudged=True) == cap  # the next rows bring their own nudge
    assert next_idle_sleep(base, 0, 200, base, cap, nudged=True) == cap
    assert next_idle_sleep(base, 200, 200, base, cap, nudged=True) == 0.0  # a full batch: more is due
    assert next_idle_sleep(base, 3, 200, base, base, nudged=True) == base  # batching off: the fixed interval


def test_a_nudged_poll_that_found_rows_holds_the_poll_interval_before_the_next_claim() -> None:
    from chancepay.scanner.policy import hold_after

    assert hold_after(3, 200, nudged=True) == 0.02  # under load: no claim per nudge
    assert hold_after(0, 200, nudged=True) == 0.0  # nothing found: rest until the next nudge
    assert hold_after(200, 200, nudged=True) == 0.0  # a full batch: claim again at once
    assert hold_after(3, 200, nudged=False) == 0.0  # polling: next_idle_sleep decides
