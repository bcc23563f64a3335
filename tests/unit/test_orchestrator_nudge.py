"""orchestrator/nudge.py: nudges are fire-and-forget and coalesced (at most one in flight; commits
during it ask for exactly one more, sent after it), and a failed one is counted, logged once per
run of failures, and raises nowhere."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chancepay.core.metrics import Metrics
from chancepay.orchestrator.nudge import (
    NUDGE_MIN_GAP_SECONDS,
    NUDGE_TAG,
    ScannerNudge,
    once_more_on_a_closed_connection,
)
from chancepay.scanner.policy import NUDGED_HOLD_SECONDS
from tests.support.recording_log import RecordingLog


class Scanner:
    """A scanner that answers each nudge when the test lets it."""

    def __init__(self, fail: bool = False) -> None:
        self.received = 0
        self.fail = fail
        self.gate = asyncio.Event()
        self.sending = False

    async def post(self) -> None:
        self.sending = True
        await self.gate.wait()
        self.received += 1
        if self.fail:
            raise ConnectionRefusedError("scanner down")


def test_commits_during_a_nudge_in_flight_coalesce_into_one_more() -> None:
    async def run() -> int:
        scanner = Scanner()
        nudge = ScannerNudge("http://scanner:8001", "t", Metrics("orchestrator"), post=scanner.post)
        nudge()
        while not scanner.sending:  # the first is in flight
            await asyncio.sleep(0)
        for _ in range(4):  # these wait for it and become one
            nudge()
        scanner.gate.set()
        while nudge._task is not None:
            await asyncio.sleep(0)
        await nudge.close()
        return scanner.received

    assert asyncio.run(run()) == 2


def test_an_empty_url_sends_nothing() -> None:
    async def run() -> bool:
        nudge = ScannerNudge("", "t", Metrics("orchestrator"), post=Scanner().post)
        nudge()
        return nudge._task is None

    assert asyncio.run(run())


def test_failures_are_counted_and_logged_once_per_run_of_failures() -> None:
    metrics = Metrics("orchestrator")
    log = RecordingLog()

    async def run() -> None:
        scanner = Scanner(fail=True)
        scanner.gate.set()
        nudge = ScannerNudge("http://scanner:8001", "t", metrics, post=scanner.post, log=log)
        for _ in range(3):
            nudge()
            while nudge._task is not None:
                await asyncio.sleep(0)
        await nudge.close()

    asyncio.run(run())
    assert metrics.scanner_nudge_failures._value.get() == 3
    assert len(log.tagged(NUDGE_TAG)) == 1


def test_the_nudge_goes_out_after_the_callers_of_the_commit_are_answered() -> None:
    async def run() -> list[str]:
        order: list[str] = []
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def caller() -> None:  # a POST /payments waiting for its group
            await committed
            order.append("202")

        async def post() -> None:
            order.append("nudge")

        waiting = asyncio.ensure_future(caller())
        await asyncio.sleep(0)
        nudge = ScannerNudge("http://scanner:8001", "t", Metrics("orchestrator"), post=post)
        nudge()  # as PaymentService does: on_commit, then the group's answers
        committed.set_result(None)
        await waiting
        while nudge._task is not None:
            await asyncio.sleep(0)
        return order

    assert asyncio.run(run()) == ["202", "nudge"]


def test_nudges_under_load_start_at_least_the_minimum_gap_apart() -> None:
    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        sent: list[float] = []

        async def post() -> None:
            sent.append(loop.time())

        nudge = ScannerNudge("http://scanner:8001", "t", Metrics("orchestrator"), post=post, min_gap=0.05)
        nudge()
        while not sent:
            await asyncio.sleep(0)
        nudge()  # a commit right after the first nudge: the next one waits for the gap
        while nudge._task is not None:
            await asyncio.sleep(0.001)
        return sent

    first, second = asyncio.run(run())
    assert second - first >= 0.05


def test_the_gap_is_the_scanners_hold() -> None:
    """Under load the scanner claims at most once per hold (scanner/policy.py), so nudges closer
    together are work for nothing and nudges further apart would delay claims."""
    assert NUDGE_MIN_GAP_SECONDS == NUDGED_HOLD_SECONDS


def test_a_connection_closed_under_a_nudge_is_tried_once_more() -> None:
    """After a scanner rollout the kept-alive connection is closed: one more try, on a new one."""
    tries: list[int] = []

    async def closed_then_ok() -> None:
        tries.append(1)
        if len(tries) == 1:
            raise aiohttp.ServerDisconnectedError()

    asyncio.run(once_more_on_a_closed_connection(closed_then_ok))
    assert len(tries) == 2

    async def always_closed() -> None:
        tries.append(1)
        raise aiohttp.ServerDisconnectedError()

    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(once_more_on_a_closed_connection(always_closed))
    assert len(tries) == 4, "twice, not more"

    async def refused_by_http() -> None:
        tries.append(1)
        raise RuntimeError("HTTP 401")

    with pytest.raises(RuntimeError):
        asyncio.run(once_more_on_a_closed_connection(refused_by_http))
    assert len(tries) == 5, "an answer that is not a closed connection is not tried again"
