"""The wallet's result callback to the orchestrator: POST /internal/payments/{uuid}/result with a
few quick tries. What an answer means is wallet/policy.py's callback_result."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import orjson

from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.wallet.policy import CallbackResult, callback_delays, callback_result

CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"


class CallbackClient:
    def __init__(self, http: aiohttp.ClientSession, orchestrator_url: str, metrics: Metrics, *,
                 tries: int, backoff: float, rng: random.Random | None = None) -> None:
        self.http = http
        self.base = orchestrator_url.rstrip("/")
        self.metrics = metrics
        self.tries = tries
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.log = get_logger()
        self.last_errors: dict[str, str] = {}  # uuid -> the last failed try's reason, until taken

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

    async def deliver(self, uuid: str, succeed: bool, tries: int | None = None) -> CallbackResult:
        tries = tries or self.tries
        delays = callback_delays(tries, self.backoff, rng=self.rng)
        for attempt in range(1, tries + 1):
            status, reason = await self._post(uuid, succeed)
            result = callback_result(status)
            if result is CallbackResult.DELIVERED:
                self.metrics.wallet_callbacks.inc()
                return result
            self.metrics.wallet_callback_failures.inc()
            self.last_errors[uuid] = reason
            self.log.error(CALLBACK_TAG, reason=reason, attempt=attempt, succeed=succeed,
                           will_retry=result is CallbackResult.RETRYABLE)
            if result is CallbackResult.REJECTED:
                self.last_errors.pop(uuid, None)
                return result
            if attempt == tries:
                return result
            await asyncio.sleep(delays[attempt - 1])
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns
