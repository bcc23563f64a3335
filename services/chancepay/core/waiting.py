"""Waiting is not failing: is a failure to reach a dependency the start-up order at work, or a failure?

In a cluster everything starts at once: the roles, `chancepay migrate` and the reconciler's first
slot come up before MariaDB and RabbitMQ are Ready (nothing answers, or their names do not even
resolve yet) and before migrate has made the tables. Each of them logs its usual `[FAILED TO ...]`
tag meanwhile, and retries. Such a line carries a field of its own, `"waiting": true` (beside
`waiting_for`: `database`, `broker` or `orchestrator`), so that exactly these lines can be left
out of a search for failures:

    kubectl logs ... | grep -F '[FAILED TO' | grep -vF '"waiting":true'

A failure line that is not waiting has no `waiting` field at all (never `"waiting": false`).

The policy (`is_waiting`, pure): a failure is *waiting* while the process has never reached that
dependency since it started and the wait is still within the dependency's budget. Once the
dependency was reached, a later failure is a failure (an outage, not the start-up order); and a
dependency not reached within its budget is a failure too, however often it is retried.

Budgets, counted from the process's start:
- a role (orchestrator, scanner, wallet): STARTUP_WAIT_SECONDS for each of its dependencies (its
  database schema, the broker, for the wallet also the orchestrator it calls back);
- `chancepay migrate`: CHANCEPAY_MIGRATE_WAIT_SECONDS, then it gives up (exit 1);
- `chancepay reconcile`: RECONCILE_WAIT_SECONDS for its database, then it gives up (exit 1).

"Reached" means usable, not merely answering: a database counts as reached when work on its
tables succeeded (or readiness found the schema at this code's version), so a role waiting for
migrate is still waiting after MariaDB itself is up.

`until_ok` is the one loop that retries a step until it succeeds, with a back-off between
failures: `retry_until_up` (every "wait until the dependency answers": migrate, reconcile, the
roles' broker connection) and `forever` (a role's background pass repeated until stopped, like the
wallet's parked callbacks and dead letters) are both made of it. The roles' steady loops log their
failures with `Dependency.fields()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chancepay.core.backoff import Backoff

T = TypeVar("T")

# The field marking a line logged while waiting (value always true; absent otherwise).
FIELD = "waiting"
# A role's start-up budget: Kubernetes' default progressDeadlineSeconds of a Deployment (after it,
# a Deployment that is not available is reported failed) and `helm install --wait`'s 10 minutes
# in scripts/kind-up.sh.
STARTUP_WAIT_SECONDS = 600.0
# The reconciler's: shorter than the chart's reconcile.activeDeadlineSeconds (240), so a pass that
# cannot reach its database says so (an unmarked failure) before Kubernetes kills it.
RECONCILE_WAIT_SECONDS = 180.0


def is_waiting(*, reached: bool, waited: float, budget: float) -> bool:
    """The policy: a failure to reach a dependency is *waiting* (not yet a failure) while that
    dependency has never been reached since the process started and it has waited `waited`
    seconds of its `budget`."""
    return not reached and waited < budget


class Dependency:
    """One thing a process needs (its database, the broker, the orchestrator it calls back) and
    whether a failure to reach it is still waiting. Created when the process starts using it."""

    def __init__(
        self, name: str, budget: float, *, since: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.budget = budget
        self.clock = clock
        self.since = clock() if since is None else since  # when the process started waiting for it
        self.reached = False

    def up(self) -> None:
        """The dependency was reached (and usable): from now on a failure is a failure."""
        self.reached = True

    def waited(self) -> float:
        return self.clock() - self.since

    @property
    def waiting(self) -> bool:
        return is_waiting(reached=self.reached, waited=self.waited(), budget=self.budget)

    def fields(self) -> dict[str, Any]:
        """What a failure line carries beside its tag: `waiting: true` and `waiting_for` while
        waiting; nothing otherwise."""
        return {FIELD: True, "waiting_for": self.name} if self.waiting else {}


async def pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def until_ok(
    step: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    on_failure: Callable[[BaseException, float], None],
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    stop: asyncio.Event | None = None,
) -> tuple[bool, T | None]:
    """Run `step` until it succeeds: (True, its result). Each failure (an exception of `retry_on`;
    anything else propagates) is told to `on_failure(exc, delay)` (which may raise to give up),
    then `backoff` decides the pause. `stop` set: (False, None). The caller resets `backoff`."""
    while stop is None or not stop.is_set():
        try:
            return True, await step()
        except retry_on as exc:
            delay = backoff.failed()
            on_failure(exc, delay)
            await pause(stop, delay)
    return False, None


async def forever(
    pass_once: Callable[[], Awaitable[int]],
    stop: asyncio.Event,
    *,
    full: int,
    idle: float,
    backoff: Backoff,
    on_failure: Callable[[BaseException, float], None],
) -> None:
    """A background pass repeated until `stop`: `pass_once` returns how much it did; a pass that
    did less than `full` pauses `idle` before the next, a failing one backs off (until_ok)."""
    while not stop.is_set():
        ok, done = await until_ok(pass_once, backoff=backoff, on_failure=on_failure, stop=stop)
        backoff.succeeded()
        if ok and (done or 0) < full:
            await pause(stop, idle)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": str(exc) or repr(exc)}


async def retry_until_up(
    step: Callable[[], Awaitable[T]],
    dependency: Dependency,
    *,
    log: Any,
    tag: str,
    backoff: Backoff,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    describe: Callable[[BaseException], dict[str, Any]] = _error,
    stop: asyncio.Event | None = None,
    give_up_after: float | None = None,
    on_failure: Callable[[], None] | None = None,
) -> tuple[bool, T | None]:
    """Run `step` until it succeeds: (True, its result), `dependency` marked reached.

    Each failure (an exception of `retry_on`) logs `tag` with `describe(exc)`, `attempt`,
    `retry_in_seconds` and `dependency.fields()` (so `"waiting": true` while waiting), then
    backs off. `stop` set: (False, None). With `give_up_after`, when the next try would come more
    than that many seconds after the first one, one last line without `waiting` (`gave_up: true`,
    `waited_seconds`) is logged and the last error raised."""
    started = time.monotonic()

    def failed(exc: BaseException, delay: float) -> None:
        if on_failure is not None:
            on_failure()
        fields = {**describe(exc), "attempt": backoff.failures}
        waited = time.monotonic() - started
        if give_up_after is not None and waited + delay > give_up_after:
            log.error(tag, **fields, gave_up=True, waited_seconds=round(waited, 1))
            raise exc
        log.error(tag, **fields, retry_in_seconds=round(delay, 2), **dependency.fields())

    opened, result = await until_ok(step, backoff=backoff, on_failure=failed, retry_on=retry_on, stop=stop)
    if opened:
        dependency.up()
        if backoff.failures:
            log.info(f"{dependency.name} reachable", attempts=backoff.failures + 1)
    return opened, result
