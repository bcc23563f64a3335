"""core/broker.py: opening the broker connection waits for the broker, gives up only when stopped."""

from __future__ import annotations

import asyncio

from chancepay.core import broker
from chancepay.core.broker import open_with_retry
from tests.support.recording_log import RecordingLog


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
