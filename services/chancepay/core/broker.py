"""Opening the broker connection at start-up: wait for it, never crash-loop on it.

On a first install the roles start before RabbitMQ answers (and, in the chart, before its
definitions granted our user). A role that exited on that would be restarted by Kubernetes with
a growing CrashLoopBackOff and come up minutes late; instead it retries here with a capped,
jittered back-off and a tagged log line, and reports not-ready meanwhile. A connection that is
lost *after* start-up still ends the process (seed design): the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from chancepay.core.backoff import Backoff
from chancepay.core.runner import sleep_or_stop

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0


async def open_with_retry(
    stop: asyncio.Event,
    open_once: Callable[[], Awaitable[None]],
    *,
    log: Any,
    tag: str,
    rng: random.Random | None = None,
    on_failure: Callable[[], None] | None = None,
) -> bool:
    """Call `open_once` until it succeeds (True) or `stop` is set (False)."""
    backoff = Backoff(FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS, rng=rng)
    while not stop.is_set():
        try:
            await open_once()
            if backoff.failures:
                log.info("broker reachable", attempts=backoff.failures + 1)
            return True
        except Exception as exc:
            if on_failure is not None:
                on_failure()
            delay = backoff.failed()
            attempt = backoff.failures
            log.error(
                tag,
                reason="connection",
                error=f"broker not reachable yet: {exc!r}"[:500],
                attempt=attempt,
                retry_in_seconds=round(delay, 2),
            )
            await sleep_or_stop(stop, delay)
    return False


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
