"""The orchestrator's nudge of the scanner: after a commit that wrote outbox rows, one
`POST /internal/outbox/nudge` so the scanner claims them now instead of at its next idle poll.

Fire-and-forget and coalesced: at most one nudge is in flight; commits during it ask for one more,
sent when it returns, so every commit is followed by a nudge that started after it; nudges start
at least NUDGE_MIN_GAP_SECONDS apart. Nothing waits for a nudge and nothing fails
with it: a lost one costs only the scanner's idle poll (CHANCEPAY_SCANNER_IDLE_MAX_SECONDS). A
failure is counted, and logged once per run of failures (a scanner that is down would otherwise log
at the payment rate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics

NUDGE_TAG = "[FAILED TO NUDGE SCANNER]"
NUDGE_PATH = "/internal/outbox/nudge"
NUDGE_TIMEOUT_SECONDS = 1.0
# Under load commits come every millisecond or two; one nudge per commit would cost the
# orchestrator and the scanner an HTTP request each (~0.15 ms of orchestrator CPU per payment at
# 800/s in a bench smoke run). Nudges start at least this far apart: at most 50/s. It is the
# scanner's hold after a nudged claim that found rows (scanner/policy.py NUDGED_HOLD_SECONDS):
# under load the scanner claims no more often than that whatever the nudges, so a nudge sooner
# is work for nothing, and a row waits no longer for its claim than the hold made it wait; at
# low rates (commits further apart) it changes nothing.
NUDGE_MIN_GAP_SECONDS = 0.02


async def once_more_on_a_closed_connection(post: Callable[[], Awaitable[None]]) -> None:
    """`post()`, and once more at once when the connection failed under it: the nudge's one
    kept-alive connection outlives a scanner pod (a rolling update stops the old pod after the
    Service moved to the new one), so the first nudge after a rollout meets a connection its
    server closed. A second try opens a new connection, resolving the name again. A nudge is
    idempotent (it only wakes the scanner), so sending it twice is harmless."""
    try:
        await post()
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        await post()


class ScannerNudge:
    def __init__(
        self,
        url: str,
        token: str,
        metrics: Metrics,
        *,
        timeout: float = NUDGE_TIMEOUT_SECONDS,
        post: Callable[[], Awaitable[None]] | None = None,
        log: Any = None,
        min_gap: float = NUDGE_MIN_GAP_SECONDS,
    ) -> None:
        self.url = url.rstrip("/") + NUDGE_PATH if url else ""
        self.token = token
        self.metrics = metrics
        self.timeout = timeout
        self.min_gap = min_gap
        self._last = float("-inf")  # when the last nudge started (loop time)
        self.post = post or self._http_post  # one nudge; raises when it was not taken
        self.log = log or get_logger()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._failing = False

    def __call__(self) -> None:
        """New outbox rows are committed: nudge the scanner (returns at once)."""
        if not self.url:
            return
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        # Called inside a commit, before its callers are woken: yield once, so the 202s go out
        # first and the nudge is not on their path.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        try:
            while True:
                gap = self._last + self.min_gap - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
                self._again = False
                self._last = loop.time()
                await self._post()
                if not self._again:
                    return
        finally:
            self._task = None

    async def _http_post(self) -> None:
        await once_more_on_a_closed_connection(self._http_post_once)

    async def _http_post_once(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # No DNS cache: the scanner's name is resolved at each new connection (rare, the one
                # connection is kept alive), so a Service that moved to another address during a
                # scanner rollout is followed at once instead of up to 10 s later (aiohttp's default
                # cache), when the old address may already refuse connections.
                connector=aiohttp.TCPConnector(limit=1, use_dns_cache=False),
            )
        async with self._session.post(self.url) as response:
            if response.status != 204:
                raise RuntimeError(f"HTTP {response.status}")

    async def _post(self) -> None:
        try:
            await self.post()
        except Exception as exc:  # a lost nudge costs only the idle poll
            self.metrics.scanner_nudge_failures.inc()
            if not self._failing:
                self.log.error(NUDGE_TAG, url=self.url, error=repr(exc)[:300], fallback="the scanner's idle poll")
            self._failing = True
        else:
            self._failing = False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
