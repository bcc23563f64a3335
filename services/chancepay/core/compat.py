"""COMPATIBILITY SHIM: results for an orchestrator without the batch endpoint.

Goes in chart/app 0.5.0, once 0.3.x is no longer a supported upgrade source: only the previous
release's orchestrator (0.3.x, during a rolling update to 0.4.x) refuses POST
/internal/payments/results. Then delete this module, its one use in core/results.py, and
tests/integration/test_batched_results.py::test_a_new_wallet_with_the_previous_orchestrator.

While a batch is refused (a 4xx other than 401/408/429: 404/405 from a release that does not
route it), results go one request each to POST /internal/payments/{uuid}/result for
OFF_SECONDS, then the batch endpoint is tried again. That endpoint's answers are turned into the
outcomes they stand for; nothing outside this module reads them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from chancepay.core.payment import Answer, Failure, Outcome, Result

OFF_SECONDS = 60.0
# The single endpoint's answer -> the outcome. 200 is "applied or repeated" (it does not say
# which); both settle the result.
_OUTCOME_OF_STATUS = {200: Outcome.APPLIED, 409: Outcome.CONFLICT, 404: Outcome.UNKNOWN}


class PreviousOrchestratorFallback:
    def __init__(
        self, http: aiohttp.ClientSession, base: str, log: Any, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.http = http
        self.base = base
        self.log = log
        self.clock = clock
        self.until = 0.0  # on the clock; until then one request per result

    def active(self) -> bool:
        return self.clock() < self.until

    @staticmethod
    def refused(status: int) -> bool:
        """The batch endpoint not served (404/405) or not understood: a 4xx no retry changes."""
        return 400 <= status < 500 and status not in (401, 408, 429)

    def switch_on(self, reason: str) -> None:
        self.until = self.clock() + OFF_SECONDS
        self.log.warning(
            "batched callbacks refused; one request per result for a while", reason=reason, seconds=OFF_SECONDS
        )

    async def send(self, results: Sequence[Result]) -> list[Answer]:
        return list(await asyncio.gather(*(self._send_one(r) for r in results)))

    async def _send_one(self, result: Result) -> Answer:
        try:
            async with self.http.post(
                f"{self.base}/internal/payments/{result.uuid}/result", json={"succeed": result.succeed}
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Failure.no_answer(exc)
        outcome = _OUTCOME_OF_STATUS.get(status)
        return outcome or Failure.of_status(status, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
