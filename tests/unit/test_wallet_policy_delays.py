"""wallet/policy.py's retry schedules: the quick callback tries, the parked-result retrier, the hold
before requeueing what the database did not take. (What becomes of a delivery is in
tests/unit/test_wallet_policy.py; these join it once the wallet's rewrite there lands.)"""

from __future__ import annotations

import random

from chancepay.wallet.policy import callback_delays, db_retry_delay, parked_retry_delay


def test_parked_retries_back_off_within_bounds() -> None:
    rng = random.Random(5)
    for attempts, full in ((1, 0.2), (2, 0.4), (5, 3.2), (8, 25.6), (9, 30.0), (50, 30.0)):
        delays = [parked_retry_delay(attempts, 0.2, 30.0, rng) for _ in range(100)]
        assert all(full / 2 <= d <= full for d in delays), (attempts, min(delays), max(delays))
    # minutes of patience: the sum of the first 20 waits is well past a rolling update
    assert sum(parked_retry_delay(a, 0.2, 30.0, random.Random(1)) for a in range(1, 21)) > 180


def test_database_retry_hold_follows_the_outage_not_the_delivery_count() -> None:
    assert db_retry_delay(0) == 0.5 and db_retry_delay(0.2) == 0.5  # a blip: half a second
    assert db_retry_delay(4) == 4
    assert db_retry_delay(60) == 15 and db_retry_delay(3600) == 15  # a long outage: probe every 15 s


def test_callback_backoff_has_full_jitter_under_the_cap() -> None:
    rng = random.Random(7)
    delays = callback_delays(6, base=0.2, cap=1.0, rng=rng)
    assert len(delays) == 5
    caps = [0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == 5, "jitter spreads retries of many wallets apart"
    assert callback_delays(1, base=0.2) == []
