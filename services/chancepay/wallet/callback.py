"""The wallet's result callbacks to the orchestrator: each result gets a few quick tries, and
results arriving together share one request (up to CHANCEPAY_CALLBACK_BATCH_SIZE results, or
whatever arrived within CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS of the first one), so the
orchestrator pays one HTTP request and one transaction per batch instead of per payment. The
requests go through the results client (core/results.py); what an answer means is
wallet/policy.py's after_callback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any, Protocol

from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Answer, Failure, Outcome, Result
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency
from chancepay.wallet.policy import callback_delays

CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"


class Sender(Protocol):
    async def send(self, results: Sequence[Result]) -> list[Answer]: ...


class Batcher:
    """Collects results for up to `linger` seconds (or `size` results) and sends them together;
    each caller gets its own result's Answer."""

    def __init__(self, sender: Sender, *, size: int, linger: float) -> None:
        self.sender = sender
        self.size = size
        self.linger = linger
        self._batch: list[tuple[Result, asyncio.Future[Answer]]] = []
        self._uuids: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def send(self, result: Result) -> Answer:
        if self.size <= 1:
            return (await self.sender.send([result]))[0]
        if result.uuid in self._uuids:  # one uuid at most once per batch: send the current one first
            self._flush()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._batch.append((result, future))
        self._uuids.add(result.uuid)
        if len(self._batch) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch, self._uuids = self._batch, [], set()
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[tuple[Result, asyncio.Future[Answer]]]) -> None:
        answers: list[Answer]
        try:
            answers = await self.sender.send([result for result, _ in batch])
        except Exception as exc:  # never leave a waiting delivery without an answer
            answers = [Failure.no_answer(exc)] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)


class Callbacks:
    """deliver(result) -> the orchestrator's Outcome, or the last try's Failure."""

    def __init__(
        self,
        sender: Sender,
        metrics: Metrics,
        *,
        tries: int,
        backoff: float,
        rng: random.Random | None = None,
        batch_size: int = 1,
        batch_linger: float = 0.002,
        log: Any = None,
    ) -> None:
        self.batcher = Batcher(sender, size=batch_size, linger=batch_linger)
        self.metrics = metrics
        self.tries = tries
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.log = log or get_logger()
        self.orchestrator = Dependency("orchestrator", STARTUP_WAIT_SECONDS)

    async def deliver(self, result: Result, tries: int | None = None) -> Answer:
        tries = tries or self.tries
        delays = callback_delays(tries, self.backoff, rng=self.rng)
        for attempt in range(1, tries + 1):
            answer = await self.batcher.send(result)
            if isinstance(answer, Outcome) or not answer.retry_helps:
                self.orchestrator.up()
            if isinstance(answer, Outcome) and answer.settles:
                self.metrics.wallet_callbacks.inc()
                return answer
            self._failed(answer, attempt, result.succeed)
            if not isinstance(answer, Failure) or not answer.retry_helps or attempt == tries:
                return answer
            await asyncio.sleep(delays[attempt - 1])
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def _failed(self, answer: Answer, attempt: int, succeed: bool) -> None:
        self.metrics.wallet_callback_failures.inc()
        if isinstance(answer, Outcome):
            reason, will_retry, waiting = _outcome_reason(answer, succeed), False, {}
        else:
            # No answer, or 5xx: the orchestrator (or its database) is not up; waiting until a
            # callback was first taken since this wallet started (core/waiting.py).
            reason, will_retry = answer.reason, answer.retry_helps
            waiting = self.orchestrator.fields() if answer.unreachable else {}
        self.log.error(CALLBACK_TAG, reason=reason, attempt=attempt, succeed=succeed, will_retry=will_retry, **waiting)


def _outcome_reason(outcome: Outcome, succeed: bool) -> str:
    """Why an outcome did not settle, for the operator: a conflict names what is stored (the other
    value: write-once kept it), unknown says there is no such request."""
    if outcome is Outcome.CONFLICT:
        return f"batch outcome conflict (stored {'FAILED' if succeed else 'SUCCEEDED'})"
    return f"batch outcome {outcome.value}"
