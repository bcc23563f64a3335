"""scanner/scanner.py's Wakeup: a nudge ends the scanner's rest, and one that comes while it is
busy is kept for the next rest (no nudge is lost between two rests)."""

from __future__ import annotations

import asyncio
import time

from chancepay.scanner.scanner import Wakeup


def test_a_nudge_ends_the_rest_early() -> None:
    async def run() -> tuple[bool, float]:
        wakeup = Wakeup()
        asyncio.get_running_loop().call_later(0.01, wakeup.nudge)
        started = time.monotonic()
        woken = await wakeup.rest(30)
        return woken, time.monotonic() - started

    woken, took = asyncio.run(run())
    assert woken and took < 5


def test_a_rest_without_a_nudge_runs_its_course() -> None:
    assert asyncio.run(Wakeup().rest(0.01)) is False


def test_a_nudge_while_busy_makes_the_next_rest_return_at_once_once() -> None:
    async def run() -> list[bool]:
        wakeup = Wakeup()
        wakeup.nudge()
        wakeup.nudge()  # coalesced: one pending wake-up
        return [await wakeup.rest(30), await wakeup.rest(0.01)]

    assert asyncio.run(run()) == [True, False]


def test_interrupt_ends_a_rest_as_not_woken() -> None:
    async def run() -> bool:
        wakeup = Wakeup()
        asyncio.get_running_loop().call_later(0.01, wakeup.interrupt)
        return await wakeup.rest(30)

    assert asyncio.run(run()) is False
