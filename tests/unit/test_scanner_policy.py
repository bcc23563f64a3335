"""scanner/policy.py: the scanner's decisions, apart from I/O."""

from __future__ import annotations

from chancepay.scanner.policy import retry_delay


def test_scanner_retry_delay_is_capped_exponential() -> None:
    assert [retry_delay(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 2, 4, 8, 60, 60, 60]
