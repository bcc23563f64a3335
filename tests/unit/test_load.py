"""load.py: the load command's statistics."""

from __future__ import annotations

from chancepay.load import percentile


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0
