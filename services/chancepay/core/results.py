"""The results client: sends results to the orchestrator (POST /internal/payments/results) and
returns, per result, the Outcome the orchestrator answered or a Failure with its reason. The one
client of finalization: the wallet (wallet/callback.py, which batches and retries) and the
reconciler (reconcile.py) both send through it.

HTTP statuses stay here: an answer that is not a batch's outcomes is a Failure, retryable when a
later try may be answered (no answer, 5xx, 401 during a token rotation, 408, 429), final
otherwise. An orchestrator that refuses the batch endpoint itself (the previous release during a
rolling update) is served by the compatibility shim in core/compat.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from chancepay.core.codec import InvalidPayload
from chancepay.core.compat import PreviousOrchestratorFallback
from chancepay.core.logging import get_logger
from chancepay.core.payment import Answer, Failure, Result, dump_results, load_outcomes


class ResultsClient:
    def __init__(self, http: aiohttp.ClientSession, orchestrator_url: str, *, log: Any = None) -> None:
        self.http = http
        self.base = orchestrator_url.rstrip("/")
        self.log = log or get_logger()
        self.compat = PreviousOrchestratorFallback(http, self.base, self.log)

    async def send(self, results: Sequence[Result]) -> list[Answer]:
        """One request for up to MAX_RESULTS results (distinct uuids); one Answer per result, in order."""
        if self.compat.active():
            return await self.compat.send(results)
        try:
            async with self.http.post(
                f"{self.base}/internal/payments/results",
                data=dump_results(results),
                headers={"Content-Type": "application/json"},
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [Failure.no_answer(exc)] * len(results)
        if status == 200:
            try:
                return list(load_outcomes(body, results))
            except InvalidPayload as exc:  # as good as no answer: retried, and "waiting" until first reached
                return [Failure.of_status(None, str(exc))] * len(results)
        reason = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
        if self.compat.refused(status):
            self.compat.switch_on(reason)
            return await self.compat.send(results)
        return [Failure.of_status(status, reason)] * len(results)
