"""Group commit, the policy alone (no SQL): concurrent items are coalesced into one `commit` call.

A group is flushed
- at once when no group is in flight: a lone item waits for nobody (API latency at low rates is
  today's). When nothing is waiting either, it is committed inline, in its caller's own task (no
  task, no future, no hop through the event loop: at low rates the per-payment path of size 1);
- at once when the waiting items fill a group (`size`);
- when the oldest waiting item has waited `linger`, or when the group in flight finishes, whichever
  comes first: the items that arrived during a commit form the next group (the classic shape).

`commit(items)` answers one outcome per item, in order: a value, or an exception for that caller.
If it raises, every item of the group gets that exception. An item whose caller went away before
its group was flushed is dropped (nothing written for it); once flushed, it commits with its group
— except a lone item committed inline, whose commit is its caller's: cancelling the caller cancels
it (the transaction rolls back, as at size 1; no answer was given either way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        size: int,
        linger: float,
        *,
        observe: Callable[[int], None] = lambda size: None,
    ) -> None:
        if size < 1 or linger < 0:
            raise ValueError("size must be >= 1 and linger >= 0")
        self._commit = commit
        self.size = size
        self.linger = linger
        self._observe = observe  # called with each flushed group's size
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Items not yet flushed."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Groups being committed."""
        return self._in_flight

    async def submit(self, item: T) -> R:
        """Wait for `item`'s group to commit; its outcome (or its exception)."""
        if self._in_flight == 0 and not self._waiting:
            return await self._alone(item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if self._in_flight == 0 or len(self._waiting) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._flush)
        return await future

    async def _alone(self, item: T) -> R:
        """A group of one committed in the caller's task. Counted in flight like any group, so the
        items arriving meanwhile wait for it (or their linger) and form the next group. A caller
        cancelled here cancels its own commit (the transaction rolls back, as at size 1)."""
        self._in_flight += 1
        self._observe(1)
        try:
            outcomes = await self._commit([item])
            if len(outcomes) != 1:
                raise AssertionError(f"{len(outcomes)} outcomes for a group of 1")
            (outcome,) = outcomes
        finally:
            self._in_flight -= 1
            if self._waiting and self._in_flight == 0:
                self._flush()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group = [(item, f) for item, f in self._waiting[: self.size] if not f.done()]
        del self._waiting[: self.size]
        if group:
            self._in_flight += 1
            self._observe(len(group))
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._waiting:  # more than a group was waiting: the rest is the next one
            if len(self._waiting) >= self.size or self._in_flight == 0:
                self._flush()
            else:
                self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)

    async def _run(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        outcomes: Sequence[R | BaseException]
        try:
            outcomes = await self._commit([item for item, _ in group])
            if len(outcomes) != len(group):
                raise AssertionError(f"{len(outcomes)} outcomes for a group of {len(group)}")
        except Exception as exc:
            outcomes = [exc] * len(group)
        finally:
            self._in_flight -= 1
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():  # its caller went away
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._waiting and self._in_flight == 0:
            self._flush()

    async def drain(self) -> None:
        """Wait until every flushed group has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
