"""The wallet's result callbacks to the orchestrator, with a few quick tries each. What an answer
means is wallet/policy.py's callback_result.

Results are sent in small batches (POST /internal/payments/results: up to
CHANCEPAY_CALLBACK_BATCH_SIZE results, or whatever arrived within CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS
of the first one), so the orchestrator pays one HTTP request and one transaction per batch instead
of per payment; each result still gets its own outcome, mapped to the status code the
single-result endpoint (POST /internal/payments/{uuid}/result) would have answered. An orchestrator
that does not serve the batch endpoint (an older release during a rolling update) gets one request
per result for a minute, then the batch endpoint is tried again."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import orjson

from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency
from chancepay.wallet.policy import CallbackResult, callback_delays, callback_result

CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"
# A batch item's outcome as the status code the single-result endpoint answers for it.
OUTCOME_STATUS = {"applied": 200, "repeated": 200, "conflict": 409, "unknown": 404}
BATCH_OFF_SECONDS = 60.0

Answer = tuple[int | None, str]  # (HTTP status or None for no answer, reason)


class CallbackClient:
    def __init__(self, http: aiohttp.ClientSession, orchestrator_url: str, metrics: Metrics, *,
                 tries: int, backoff: float, rng: random.Random | None = None,
                 batch_size: int = 1, batch_linger: float = 0.002) -> None:
        self.http = http
        self.base = orchestrator_url.rstrip("/")
        self.metrics = metrics
        self.tries = tries
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.log = get_logger()
        self.last_errors: dict[str, str] = {}  # uuid -> the last failed try's reason, until taken
        self.batch_size = batch_size
        self.batch_linger = batch_linger
        self._batch: list[tuple[str, bool, asyncio.Future[Answer]]] = []
        self._batch_uuids: set[str] = set()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._batch_off_until = 0.0  # monotonic; until then one request per result
        self.orchestrator = Dependency("orchestrator", STARTUP_WAIT_SECONDS)

    def take_error(self, uuid: str) -> str:
        """The reason the last try for `uuid` failed ("" if none), forgotten once read."""
        return self.last_errors.pop(uuid, "")

    async def _post(self, uuid: str, succeed: bool) -> tuple[int | None, str]:
        try:
            async with self.http.post(
                f"{self.base}/internal/payments/{uuid}/result",
                data=orjson.dumps({"succeed": succeed}),
                headers={"Content-Type": "application/json"},
            ) as response:
                body = await response.read()
                return response.status, f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def _send(self, uuid: str, succeed: bool) -> Answer:
        """One result to the orchestrator, batched with others when batching is on."""
        if self.batch_size <= 1 or time.monotonic() < self._batch_off_until:
            return await self._post(uuid, succeed)
        if uuid in self._batch_uuids:  # one uuid at most once per batch: send the current one first
            self._flush()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._batch.append((uuid, succeed, future))
        self._batch_uuids.add(uuid)
        if len(self._batch) >= self.batch_size:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.batch_linger, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._batch, self._batch_uuids = self._batch, [], set()
        if batch:
            task = asyncio.create_task(self._post_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _post_batch(self, batch: list[tuple[str, bool, asyncio.Future[Answer]]]) -> None:
        try:
            answers = await self._post_many([(uuid, succeed) for uuid, succeed, _ in batch])
        except Exception as exc:  # never leave a waiting delivery without an answer
            answers = [(None, f"{type(exc).__name__}: {exc}")] * len(batch)
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def _post_many(self, items: list[tuple[str, bool]]) -> list[Answer]:
        body = orjson.dumps({"results": [{"uuid": uuid, "succeed": succeed} for uuid, succeed in items]})
        try:
            async with self.http.post(f"{self.base}/internal/payments/results", data=body,
                                      headers={"Content-Type": "application/json"}) as response:
                content = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [(None, f"{type(exc).__name__}: {exc}")] * len(items)
        if status == 200:
            try:
                outcomes: list[dict[str, Any]] = orjson.loads(content)["results"]
                if [o["uuid"] for o in outcomes] != [uuid for uuid, _ in items]:
                    raise ValueError("the outcomes do not match the results sent")
                return [(OUTCOME_STATUS[o["outcome"]], f"batch outcome {o['outcome']} (stored {o['status']})")
                        for o in outcomes]
            except (ValueError, KeyError, TypeError) as exc:
                return [(None, f"unreadable batch answer: {exc}")] * len(items)
        reason = f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}"
        if 400 <= status < 500 and status not in (401, 408, 429):
            # Not served (404/405: an older orchestrator) or not understood: one request per result.
            self._batch_off_until = time.monotonic() + BATCH_OFF_SECONDS
            self.log.warning("batched callbacks refused; one request per result for a while", reason=reason,
                             seconds=BATCH_OFF_SECONDS)
            return list(await asyncio.gather(*(self._post(uuid, succeed) for uuid, succeed in items)))
        return [(status, reason)] * len(items)

    async def deliver(self, uuid: str, succeed: bool, tries: int | None = None) -> CallbackResult:
        tries = tries or self.tries
        delays = callback_delays(tries, self.backoff, rng=self.rng)
        for attempt in range(1, tries + 1):
            status, reason = await self._send(uuid, succeed)
            result = callback_result(status)
            if result is not CallbackResult.RETRYABLE:
                self.orchestrator.up()
            if result is CallbackResult.DELIVERED:
                self.metrics.wallet_callbacks.inc()
                return result
            self.metrics.wallet_callback_failures.inc()
            self.last_errors[uuid] = reason
            # No answer, or 5xx: the orchestrator (or its database) is not up; waiting until a
            # callback was first taken since this wallet started (core/waiting.py).
            unreachable = status is None or status >= 500
            self.log.error(CALLBACK_TAG, reason=reason, attempt=attempt, succeed=succeed,
                           will_retry=result is CallbackResult.RETRYABLE,
                           **(self.orchestrator.fields() if unreachable else {}))
            if result is CallbackResult.REJECTED:
                self.last_errors.pop(uuid, None)
                return result
            if attempt == tries:
                return result
            await asyncio.sleep(delays[attempt - 1])
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns
