"""Opening the broker connection at start-up: wait for it, never crash-loop on it.

On a first install the roles start before RabbitMQ answers (and, in the chart, before its
definitions granted our user). A role that exited on that would be restarted by Kubernetes with
a growing CrashLoopBackOff and come up minutes late; instead it retries here with a capped,
jittered back-off and a tagged log line (`"waiting": true` within the start-up budget, see
core/waiting.py), and reports not-ready meanwhile. A connection that is lost *after* start-up
still ends the process (seed design): the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from chancepay.core.backoff import Backoff
from chancepay.core.preflight import CannotProceed
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency, retry_until_up

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0


async def open_with_retry(
    stop: asyncio.Event,
    open_once: Callable[[], Awaitable[None]],
    *,
    log: Any,
    tag: str,
    broker: Dependency | None = None,
    rng: random.Random | None = None,
    on_failure: Callable[[], None] | None = None,
) -> bool:
    """Call `open_once` until it succeeds (True) or `stop` is set (False). Each failure logs `tag`
    with `"waiting": true` while `broker` (made now if not given) was never reached since the
    process started and its start-up budget lasts (core/waiting.py); after that, without. A
    refusal from `open_once` (CannotProceed: core/durability.py's gate) is raised, not retried."""
    broker = broker or Dependency("broker", STARTUP_WAIT_SECONDS)
    refusals: list[CannotProceed] = []

    async def attempt() -> None:
        try:
            await open_once()
        except CannotProceed as exc:  # the broker answered, and what it holds is refused: no retry
            refusals.append(exc)

    opened, _ = await retry_until_up(
        attempt,
        broker,
        log=log,
        tag=tag,
        backoff=Backoff(FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS, rng=rng),
        describe=lambda exc: {"reason": "connection", "error": f"broker not reachable yet: {exc!r}"[:500]},
        stop=stop,
        on_failure=on_failure,
    )
    if refusals:
        raise refusals[0]
    return opened


async def connect_any(urls: list[str], *, timeout: float = 10.0, start: int = 0) -> Any:
    """A connection to the first node of `urls` (in turn from `start`) that accepts one; the last
    error if none does. Several URLs are the nodes of one cluster: any of them serves the queue."""
    import aiormq

    last: BaseException | None = None
    for i in range(len(urls)):
        url = urls[(start + i) % len(urls)]
        try:
            return await asyncio.wait_for(aiormq.connect(url), timeout=timeout)
        except Exception as exc:
            last = exc
    assert last is not None
    raise last


async def close_quietly(connection: Any) -> None:
    if connection is not None and not connection.is_closed:
        try:
            await asyncio.wait_for(connection.close(), timeout=2)
        except Exception:
            pass
