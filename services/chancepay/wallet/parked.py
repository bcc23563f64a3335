"""The parked-callback retrier, shaped like the scanner: `retry_parked_once` claims the due parked
results (SKIP LOCKED and a lease, so several wallets share them), tries each once, forgets the
ones the orchestrator took or refused, reschedules the rest with a capped, jittered back-off;
`retry_parked_forever` repeats it until the role stops (core/waiting.py forever). An orchestrator
restart or rolling update heals without the reconciler, and so does a wallet restart (the rows
outlive the process)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, Protocol

from chancepay.core.backoff import Backoff
from chancepay.core.db import DatabaseUnavailable
from chancepay.core.logging import bound, get_logger
from chancepay.core.payment import Answer, Failure, Result
from chancepay.core.waiting import Dependency, forever
from chancepay.wallet.callback import CALLBACK_TAG
from chancepay.wallet.delivery import REJECTED_REASON, CallbacksPort
from chancepay.wallet.inbox import ParkedCallback
from chancepay.wallet.policy import Action, after_callback

# Rows claimed per pass, how long a claim hides them from other wallets, the pause when nothing is due.
RETRY_BATCH = 100
RETRY_LEASE_SECONDS = 30.0
RETRY_IDLE_SECONDS = 0.5


class ParkedPort(Protocol):
    async def claim_parked(self, limit: int, lease_seconds: float) -> list[ParkedCallback]: ...
    async def forget_parked(self, uuids: list[str]) -> None: ...
    async def reschedule_parked(self, retries: list[tuple[str, float, str]]) -> None: ...


class ParkedRetrier:
    def __init__(
        self,
        inbox: ParkedPort,
        callbacks: CallbacksPort,
        *,
        next_delay: Callable[[int], float],
        database: Dependency,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self.inbox = inbox
        self.callbacks = callbacks
        self.next_delay = next_delay  # failed background tries so far -> seconds to the next one
        self.database = database
        self.rng = rng or random.Random()
        self.log = log or get_logger()

    async def retry_parked_once(self) -> int:
        """Claim due parked callbacks, try each once, forget the delivered and rejected ones,
        reschedule the rest. Returns rows claimed."""
        rows = await self.inbox.claim_parked(RETRY_BATCH, RETRY_LEASE_SECONDS)
        if not rows:
            return 0

        async def one(row: ParkedCallback) -> Answer:
            with bound(uuid=row.uuid):
                return await self.callbacks.deliver(Result(row.uuid, row.succeed), tries=1)

        answers = await asyncio.gather(*(one(r) for r in rows))
        done: list[str] = []
        again: list[tuple[str, float, str]] = []
        for row, answer in zip(rows, answers, strict=True):
            action = after_callback(answer)
            if action is Action.PARK:
                assert isinstance(answer, Failure)
                again.append((row.uuid, self.next_delay(row.attempts + 1), answer.reason))
                continue
            if action is Action.REJECTED:
                self.log.error(
                    CALLBACK_TAG,
                    uuid=row.uuid,
                    succeed=row.succeed,
                    reason=f"{REJECTED_REASON}; dropped, needs an operator",
                )
            done.append(row.uuid)
        await self.inbox.forget_parked(done)
        await self.inbox.reschedule_parked(again)
        return len(rows)

    async def retry_parked_forever(self, stop: asyncio.Event) -> None:
        def failed(exc: BaseException, delay: float) -> None:  # the database away: parked rows wait
            self.log.error(
                "[FAILED TO REACH DATABASE]",
                step="read parked callbacks",
                error=str(exc),
                retry_in_seconds=round(delay, 2),
                **self._waiting(exc),
            )

        await forever(
            self.retry_parked_once,
            stop,
            full=RETRY_BATCH,
            idle=RETRY_IDLE_SECONDS,
            backoff=Backoff(0.5, 10.0, rng=self.rng),
            on_failure=failed,
        )

    def _waiting(self, exc: BaseException) -> dict[str, Any]:
        return self.database.fields() if isinstance(exc, DatabaseUnavailable) else {}
