"""Group commit's policy (orchestrator/group.py) on a fake commit: a lone item is flushed at once,
arrivals during a commit form the next group, a full group goes at once, linger bounds the wait,
every caller gets its own outcome, a failed commit fails its whole group and only it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

import pytest

from chancepay.orchestrator.group import GroupCommit


class FakeCommit:
    """Records each group; holds every commit until released (`gate`), then answers item * 10,
    or an exception for items < 0; `fail` makes the next commit raise."""

    def __init__(self, *, held: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.fail: BaseException | None = None

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.groups.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        return [ValueError(i) if i < 0 else i * 10 for i in items]


def run(case: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """The unit tier has no async plugin: each case runs in its own event loop."""
    @functools.wraps(case)
    def test() -> None:
        asyncio.run(case())  # type: ignore[arg-type]

    return test


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@run
async def test_a_lone_item_is_flushed_at_once() -> None:
    commit = FakeCommit()
    group = GroupCommit(commit, size=32, linger=60)
    assert await asyncio.wait_for(group.submit(1), 1) == 10
    assert commit.groups == [[1]]


@run
async def test_arrivals_during_a_commit_form_the_next_group() -> None:
    commit = FakeCommit(held=True)
    sizes: list[int] = []
    group = GroupCommit(commit, size=32, linger=60, observe=sizes.append)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    rest = [asyncio.create_task(group.submit(i)) for i in range(2, 7)]
    await _settle()
    assert commit.groups == [[1]] and group.waiting == 5 and group.in_flight == 1
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 1) == [10, 20, 30, 40, 50, 60]
    assert commit.groups == [[1], [2, 3, 4, 5, 6]]
    assert sizes == [1, 5]


@run
async def test_a_full_group_goes_without_waiting_for_the_one_in_flight() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=3, linger=60)
    tasks = [asyncio.create_task(group.submit(i)) for i in range(1, 8)]
    await _settle()
    assert commit.groups == [[1], [2, 3, 4], [5, 6, 7]]
    assert group.in_flight == 3
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [10, 20, 30, 40, 50, 60, 70]


@run
async def test_linger_bounds_the_wait_behind_a_slow_commit() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=0.01)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    second = asyncio.create_task(group.submit(2))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(commit.groups) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert commit.groups == [[1], [2]], "the second group left after the linger, the first still in flight"
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [10, 20]


@run
async def test_each_caller_gets_its_own_outcome() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    good, bad = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(-3))
    commit.gate.set()
    assert await asyncio.wait_for(first, 1) == 10
    assert await asyncio.wait_for(good, 1) == 20
    with pytest.raises(ValueError):
        await asyncio.wait_for(bad, 1)
    assert commit.groups == [[1], [2, -3]]


@run
async def test_a_failed_commit_fails_its_whole_group_and_only_it() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=2, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    second = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    await _settle()
    commit.fail = ConnectionError("down")  # the first commit to end raises: the first group's
    commit.gate.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(first, 1)
    assert await asyncio.wait_for(asyncio.gather(*second), 1) == [20, 30]


@run
async def test_a_caller_gone_before_the_flush_writes_nothing() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    gone, kept = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(3))
    await _settle()
    gone.cancel()
    await _settle()
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, kept), 1) == [10, 30]
    assert commit.groups == [[1], [3]]


def test_size_and_linger_are_checked() -> None:
    with pytest.raises(ValueError):
        GroupCommit(FakeCommit(), size=0, linger=0)
