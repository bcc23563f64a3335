"""scanner/scanner.py's Wakeup: a nudge ends the scanner's rest, and one that comes while it is
busy is kept for the next rest (no nudge is lost between two rests); InFlight: a failed batch is
logged when it ends (every one, draining too) and ends the rest at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

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


def test_in_flight_bounds_the_batches_and_raises_a_failed_ones_error_in_the_next_cycle() -> None:
    from chancepay.scanner.scanner import InFlight

    class Lost(Exception):
        pass

    async def run() -> list[str]:
        seen: list[str] = []
        gate = asyncio.Event()
        in_flight = InFlight(2)

        async def batch(name: str, fail: bool = False) -> None:
            await gate.wait()
            seen.append(name)
            if fail:
                raise Lost(name)

        await in_flight.room()
        in_flight.start(batch("a", fail=True))
        await in_flight.room()  # one in flight: room for a second
        in_flight.start(batch("b"))
        waiting = asyncio.ensure_future(in_flight.room())  # two: the third claim waits
        await asyncio.sleep(0.01)
        assert not waiting.done()
        gate.set()
        try:
            await waiting
        except Lost as exc:
            seen.append(f"raised {exc}")
        await in_flight.drain()
        return seen

    assert asyncio.run(run()) == ["a", "b", "raised a"]


class Log:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, object]]] = []

    def error(self, event: str, **fields: object) -> None:
        self.errors.append((event, fields))


def _scanner_parts() -> tuple[Any, Log]:
    """A Scanner with only what batch failures touch: its log, its Wakeup and its InFlight."""
    from chancepay.scanner.scanner import InFlight, Scanner

    scanner = Scanner.__new__(Scanner)
    log = Log()
    scanner.log = log  # type: ignore[assignment]
    scanner.wakeup = Wakeup()
    scanner.in_flight = InFlight(4, on_failure=scanner.batch_failed)
    return scanner, log


def test_a_failed_batch_ends_the_rest_at_once_and_every_failure_is_logged() -> None:
    scanner, log = _scanner_parts()

    async def failing(name: str, gate: asyncio.Event) -> None:
        await gate.wait()
        raise RuntimeError(name)

    async def run() -> tuple[bool, float, str]:
        gate = asyncio.Event()
        scanner.in_flight.start(failing("a", gate))
        scanner.in_flight.start(failing("b", gate))
        asyncio.get_running_loop().call_later(0.01, gate.set)
        started = time.monotonic()
        woken = await scanner.wakeup.rest(30)  # the idle rest: a failure ends it, not its 30 s
        took = time.monotonic() - started
        assert scanner.in_flight.failed
        with pytest.raises(RuntimeError) as raised:
            scanner.in_flight.reap()
        assert not scanner.in_flight.failed and not scanner.in_flight.tasks
        return woken, took, str(raised.value)

    woken, took, first = asyncio.run(run())
    assert woken is False and took < 5, took
    assert first in {"a", "b"}
    assert sorted(f["error"] for _, f in log.errors) == ["RuntimeError: a", "RuntimeError: b"], "each one logged"
    assert {event for event, _ in log.errors} == {"[FAILED TO SCAN OUTBOX]"}


def test_drain_logs_a_failed_batch() -> None:
    scanner, log = _scanner_parts()

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("delete failed")

    async def run() -> None:
        scanner.in_flight.start(failing())
        await scanner.in_flight.drain()

    asyncio.run(run())
    assert [f["error"] for _, f in log.errors] == ["ConnectionError: delete failed"]
