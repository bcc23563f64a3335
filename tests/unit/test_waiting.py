"""Waiting is not failing (core/waiting.py): the pure policy, the dependency tracker, the one retry
loop, and the exact bytes the README's grep recipe relies on."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from chancepay.core import logging as chancelog
from chancepay.core.backoff import Backoff
from chancepay.core.waiting import FIELD, Dependency, is_waiting, retry_until_up
from tests.support.recording_log import RecordingLog

TAG = "[FAILED TO REACH DATABASE]"
# What the README's recipe and the kind workflow leave out: the JSON renderer's exact spelling.
WAITING_MARK = '"waiting":true'


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Log(RecordingLog):
    def tagged(self, tag: str = TAG) -> list[dict]:
        return super().tagged(tag)


def test_the_policy_waiting_only_before_first_reached_and_within_budget() -> None:
    assert is_waiting(reached=False, waited=0, budget=600)
    assert is_waiting(reached=False, waited=599.9, budget=600)
    assert not is_waiting(reached=False, waited=600, budget=600)  # the budget is spent: a failure
    assert not is_waiting(reached=True, waited=1, budget=600)  # was up, fails again: a failure
    assert not is_waiting(reached=True, waited=10_000, budget=600)
    assert not is_waiting(reached=False, waited=0, budget=0)  # no budget: never waiting


def test_a_dependency_waits_until_reached_or_out_of_budget() -> None:
    clock = _Clock()
    db = Dependency("database", 60, clock=clock)
    assert db.waiting and db.fields() == {FIELD: True, "waiting_for": "database"}
    clock.now += 59
    assert db.waiting
    clock.now += 1
    assert not db.waiting and db.fields() == {}  # never reached in its budget: failures are failures

    broker = Dependency("broker", 60, clock=clock)
    broker.up()
    assert not broker.waiting and broker.fields() == {}  # once up, a later failure is a failure
    clock.now += 1
    assert broker.fields() == {}

    shared = Dependency("wallet", 60, since=clock.now - 59, clock=clock)  # started with another one
    assert shared.waiting
    clock.now += 1
    assert not shared.waiting


def _flaky(failures: int, exc: BaseException) -> tuple[list[int], object]:
    calls: list[int] = []

    async def step() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "done"

    return calls, step


def test_retry_until_up_marks_every_line_before_the_dependency_is_reached() -> None:
    log, db = _Log(), Dependency("database", 600)
    calls, step = _flaky(3, ConnectionRefusedError("refused"))
    opened, result = asyncio.run(retry_until_up(step, db, log=log, tag=TAG, backoff=Backoff(0.001, 0.001)))
    assert (opened, result, len(calls)) == (True, "done", 4)
    tagged = log.tagged()
    assert [kw["attempt"] for kw in tagged] == [1, 2, 3]
    assert all(kw[FIELD] is True and kw["waiting_for"] == "database" and "refused" in kw["error"] for kw in tagged)
    assert db.reached and ("database reachable", {"attempts": 4}) in log.lines


def test_retry_until_up_after_the_dependency_was_reached_logs_failures() -> None:
    log, db = _Log(), Dependency("database", 600)
    db.up()  # reached earlier in this process: this is an outage, not the start-up order
    _, step = _flaky(2, ConnectionRefusedError("refused"))
    asyncio.run(retry_until_up(step, db, log=log, tag=TAG, backoff=Backoff(0.001, 0.001)))
    assert len(log.tagged()) == 2 and all(FIELD not in kw for kw in log.tagged())


def test_retry_until_up_past_the_budget_logs_failures() -> None:
    clock = _Clock()
    log, db = _Log(), Dependency("broker", 10, clock=clock)
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        clock.now += 4  # each try costs 4 s of the 10 s budget
        if len(calls) < 5:
            raise OSError("no route")

    asyncio.run(retry_until_up(step, db, log=log, tag=TAG, backoff=Backoff(0.001, 0.001)))
    assert [kw.get(FIELD, False) for kw in log.tagged()] == [True, True, False, False]


def test_retry_until_up_gives_up_after_its_budget_with_an_unmarked_line() -> None:
    log, db = _Log(), Dependency("database", 0.2)
    _, step = _flaky(10**6, ConnectionRefusedError("refused"))

    async def go() -> None:
        await retry_until_up(step, db, log=log, tag=TAG, backoff=Backoff(0.02, 0.02, exact=True), give_up_after=0.2)

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(go())
    *waiting, last = log.tagged()
    assert waiting and all(kw[FIELD] is True for kw in waiting)
    assert last["gave_up"] is True and FIELD not in last and last["waited_seconds"] >= 0.1


def test_retry_until_up_retries_only_what_it_is_told_to() -> None:
    log, db = _Log(), Dependency("database", 600)
    _, step = _flaky(1, ValueError("a bug, not an outage"))

    async def go() -> None:
        await retry_until_up(step, db, log=log, tag=TAG, backoff=Backoff(0.001, 0.001), retry_on=OSError)

    with pytest.raises(ValueError):
        asyncio.run(go())
    assert log.tagged() == [] and not db.reached


def test_retry_until_up_returns_when_stopped() -> None:
    _, step = _flaky(10**6, OSError("down"))

    async def go() -> tuple[bool, object]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await retry_until_up(
            step, Dependency("broker", 600), log=_Log(), tag=TAG, backoff=Backoff(0.01, 0.01), stop=stop
        )

    assert asyncio.run(go()) == (False, None)


def test_the_rendered_line_carries_exactly_what_the_grep_recipe_leaves_out() -> None:
    """README: `grep -F '[FAILED TO' | grep -vF '"waiting":true'` lists the failures; jq:
    `select(.waiting != true)`."""
    out = io.StringIO()
    chancelog.configure("scanner", "INFO", stream=out)
    waiting_db = Dependency("database", 600)
    reached_db = Dependency("database", 600)
    reached_db.up()
    log = chancelog.get_logger()
    log.error("[FAILED TO SCAN OUTBOX]", error="refused", **waiting_db.fields())
    log.error("[FAILED TO SCAN OUTBOX]", error="refused", **reached_db.fields())
    first, second = out.getvalue().splitlines()
    assert WAITING_MARK in first and json.loads(first)[FIELD] is True
    assert "waiting" not in second and FIELD not in json.loads(second)
    failures = [line for line in (first, second) if "[FAILED TO" in line and WAITING_MARK not in line]
    assert failures == [second]
