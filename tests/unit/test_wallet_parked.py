"""wallet/parked.py: the parked-callback retrier (once / forever), with fakes."""

from __future__ import annotations

import asyncio

from chancepay.core.db import DatabaseUnavailable
from chancepay.core.payment import Answer, Failure, Outcome, Result
from chancepay.core.waiting import Dependency
from chancepay.wallet.inbox import ParkedCallback
from chancepay.wallet.parked import ParkedRetrier
from tests.support.fakes import FakeCallbacks, FakeInbox
from tests.support.recording_log import RecordingLog

A, B, C = (f"0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6{i}" for i in range(3))


def test_once_forgets_the_taken_and_refused_and_reschedules_the_rest() -> None:
    answers: dict[str, Answer] = {A: Outcome.APPLIED, B: Outcome.CONFLICT, C: Failure("HTTP 503", unreachable=True)}
    inbox = FakeInbox(parked=[ParkedCallback(A, True, 0), ParkedCallback(B, False, 2), ParkedCallback(C, True, 4)])
    callbacks, log = FakeCallbacks(lambda r: answers[r.uuid]), RecordingLog()
    retrier = ParkedRetrier(
        inbox, callbacks, next_delay=lambda attempts: float(attempts), database=Dependency("database", 600.0), log=log
    )
    assert asyncio.run(retrier.retry_parked_once()) == 3
    assert [tries for _, tries in callbacks.calls] == [1, 1, 1]  # one try each: the back-off is the table's
    assert {r for r, _ in callbacks.calls} == {Result(A, True), Result(B, False), Result(C, True)}
    assert inbox.forgotten == [A, B]
    assert inbox.rescheduled == [(C, 5.0, "HTTP 503")]
    assert "dropped, needs an operator" in log.tagged("[FAILED TO CALLBACK FROM WALLET]")[0]["reason"]
    assert asyncio.run(retrier.retry_parked_once()) == 0


def test_forever_waits_out_the_database_and_stops() -> None:
    class Flaky(FakeInbox):
        def __init__(self) -> None:
            super().__init__()
            self.claims = 0

        async def claim_parked(self, limit: int, lease_seconds: float) -> list[ParkedCallback]:
            self.claims += 1
            if self.claims == 1:
                raise DatabaseUnavailable("refused")
            stop.set()
            return []

    stop = asyncio.Event()
    inbox, log = Flaky(), RecordingLog()
    retrier = ParkedRetrier(inbox, FakeCallbacks(), next_delay=float, database=Dependency("database", 600.0), log=log)
    asyncio.run(asyncio.wait_for(retrier.retry_parked_forever(stop), timeout=5))
    assert inbox.claims == 2
    (line,) = log.tagged("[FAILED TO REACH DATABASE]")
    assert line["step"] == "read parked callbacks" and line["waiting"] is True
