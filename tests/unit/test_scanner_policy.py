"""scanner/policy.py: the scanner's decisions, apart from I/O: what each publish result means, and
the back-off of a row that keeps failing."""

from __future__ import annotations

from typing import Any

import aiormq.exceptions
from pamqp import commands as spec

from chancepay.scanner.policy import OutboxRow, retry_delay, sort_results


def test_scanner_sorts_publish_results() -> None:
    rows = [OutboxRow(f"u{i}", b"{}", 0) for i in range(5)]
    results: list[Any] = [spec.Basic.Ack(), aiormq.exceptions.DeliveryError(None, spec.Basic.Nack()), TimeoutError(),
                          ConnectionResetError(), object()]
    acked, failures = sort_results(rows, results)
    assert acked == ["u0"]
    assert [(f.row.uuid, f.reason) for f in failures] == [
        ("u1", "nack"), ("u2", "timeout"), ("u3", "connection"), ("u4", "returned")]


def test_scanner_retry_delay_is_capped_exponential() -> None:
    assert [retry_delay(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 2, 4, 8, 60, 60, 60]
