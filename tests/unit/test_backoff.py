"""core/backoff.py: the capped exponential schedule, its jitter, and `Backoff`."""

from __future__ import annotations

import random

from chancepay.core.backoff import Backoff, capped_exponential, full_jitter, half_jitter


def test_capped_exponential_and_jitter_bounds() -> None:
    assert [capped_exponential(n, 0.5, 10) for n in (1, 2, 3, 4, 5, 6, 1000)] == [0.5, 1, 2, 4, 8, 10, 10]
    rng = random.Random(3)
    for delay in (0.1, 1.0, 15.0):
        assert all(delay / 2 <= half_jitter(delay, rng) <= delay for _ in range(200))
        assert all(0 <= full_jitter(delay, rng) <= delay for _ in range(200))


def test_backoff_grows_with_consecutive_failures_and_forgets_on_success() -> None:
    exact = Backoff(0.5, 4, exact=True)
    assert [exact.failed() for _ in range(5)] == [0.5, 1, 2, 4, 4]
    exact.succeeded()
    assert exact.failed() == 0.5
    jittered = Backoff(1, 8, rng=random.Random(2))
    for full in (1, 2, 4, 8, 8):
        assert full / 2 <= jittered.failed() <= full
