"""Pure policies added for the chart's start-up order and broker-independent delivery counting."""

from __future__ import annotations

import asyncio
import random

from chancepay.core.backoff import capped_exponential, full_jitter, half_jitter
from chancepay.core import broker
from chancepay.core.broker import open_with_retry
from chancepay.wallet.policy import Action, CallbackResult, after_callback, db_retry_delay, parked_retry_delay
from tests.support.recording_log import RecordingLog


def test_capped_exponential_and_jitter_bounds() -> None:
    assert [capped_exponential(n, 0.5, 10) for n in (1, 2, 3, 4, 5, 6, 1000)] == [0.5, 1, 2, 4, 8, 10, 10]
    rng = random.Random(3)
    for delay in (0.1, 1.0, 15.0):
        assert all(delay / 2 <= half_jitter(delay, rng) <= delay for _ in range(200))
        assert all(0 <= full_jitter(delay, rng) <= delay for _ in range(200))


def test_an_undelivered_result_is_parked_not_requeued() -> None:
    """A failing callback no longer loops the message through the broker (whose x-delivery-count
    RabbitMQ 4.3 redefined): the result is parked in the wallet's own table and the message acked."""
    assert after_callback(CallbackResult.RETRYABLE) is Action.PARK
    assert after_callback(CallbackResult.DELIVERED) is Action.ACK
    assert after_callback(CallbackResult.REJECTED) is Action.ACK  # 404/409: retrying cannot help


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


def test_open_with_retry_waits_for_the_broker_then_succeeds(monkeypatch) -> None:
    monkeypatch.setattr(broker, "FIRST_RETRY_SECONDS", 0.001)
    calls = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("refused")

    async def go() -> bool:
        return await open_with_retry(asyncio.Event(), flaky, log=log, tag="[FAILED TO SEND TO MQ]")

    log = RecordingLog()
    assert asyncio.run(go()) is True and len(calls) == 3
    tagged = log.tagged("[FAILED TO SEND TO MQ]")
    assert [kw["attempt"] for kw in tagged] == [1, 2]
    assert all(kw["reason"] == "connection" and "refused" in kw["error"] for kw in tagged)


def test_open_with_retry_gives_up_only_when_stopped() -> None:
    async def never() -> None:
        raise ConnectionRefusedError("refused")

    async def go() -> bool:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await open_with_retry(stop, never, log=RecordingLog(), tag="[FAILED TO CONSUME FROM MQ]")

    assert asyncio.run(go()) is False


def test_leftovers_are_recognised_by_the_pid_in_their_name() -> None:
    import os

    from tests.support.cleanup import stale

    dead = 2**22 + 12345  # above pid_max on Linux: never a live process
    assert stale(f"cpt_{dead}_ab12cd_orch") and stale(f"cptest-{dead}-abc123-mariadb")
    assert stale(f"cpp-{dead}-ab12-orchestrator-0") and stale(f"cpplay-cpp-{dead}-ab12-mariadb-0")
    assert not stale(f"cpt_{os.getpid()}_ab12cd_orch"), "a live run's objects are kept"
    assert not stale("chancepay_orchestrator") and not stale("cpt_legacy")
