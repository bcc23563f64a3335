"""`chancepay reconcile`: one pass over requests pending longer than a threshold (database clock).

For each such request, in order:
- its outbox row still exists -> leave it: the scanner owns it (retrying, or exhausted and
  visible in chancepay_outbox_exhausted_rows);
- the wallet's inbox holds a final result -> finalize it through the results client
  (core/results.py, the wallet's own: write-once; a conflict is reported, never overwritten);
- the wallet has no inbox row -> the message was lost between the outbox and the wallet:
  put it back into the outbox (INSERT IGNORE; a copy still in the queue is harmless, the
  inbox deduplicates);
- the inbox row is pending -> leave it, the wallet is deciding.
Every repair is logged and counted (chancepay_reconcile_repairs_total{kind}); a failure logs
[FAILED TO RECONCILE]. A pass that repaired or failed something leaves one row in the operator
trail (core/trail.py: command `reconcile`, each uuid with `reenqueued`, `finalized_from_inbox`,
`conflict` or `failed`, the pass's counts as detail); a pass that found nothing to repair leaves
none (a CronJob runs one every few minutes: its log line and pushed counters say it ran). A pass
also waits for the trail's tables (a schema older than the code) as for its database.
A pass may start before its dependencies are up (a CronJob slot during a
first install or a reinstall): it waits for the database, and for the wallet and the orchestrator
when it first needs them, each failed try logged with `"waiting": true`, for at most
RECONCILE_WAIT_SECONDS in all (core/waiting.py); then it gives up (exit 1, lines without
`waiting`). Counters of a one-shot process are pushed to a Prometheus Pushgateway when
CHANCEPAY_PUSHGATEWAY_URL is set, and always summarized in the last log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiohttp
import httpx
from prometheus_client import push_to_gateway

from chancepay.core import sql, trail
from chancepay.core.backoff import Backoff
from chancepay.core.config import Settings
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.errors import ChancePayError
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Failure, Outcome, PaymentMessage, Result, inbox_succeed
from chancepay.core.results import ResultsClient
from chancepay.core.waiting import RECONCILE_WAIT_SECONDS, Dependency, retry_until_up

RECONCILE_TAG = "[FAILED TO RECONCILE]"
T = TypeVar("T")


class NotUpYet(ChancePayError):
    """The wallet or the orchestrator answered 5xx (up, but its database not yet), or did not answer."""


class NotFinalized(ChancePayError):
    """The orchestrator did not take the inbox's result (an unknown payment, a refused request)."""


@dataclasses.dataclass
class PassSummary:
    examined: int = 0
    finalized_from_inbox: int = 0
    reenqueued: int = 0
    left_in_outbox: int = 0
    left_inbox_pending: int = 0
    conflicts: int = 0
    failures: int = 0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        orchestrator: ResultsClient,
        wallet: httpx.AsyncClient,
        metrics: Metrics,
        action: trail.Action | None = None,
    ) -> None:
        self.settings = settings
        # What this pass did to which uuid, for its operator trail row (reconcile_main records it).
        self.action = action if action is not None else trail.Action("reconcile", {})
        self.db = db
        self.orchestrator = orchestrator
        self.wallet = wallet
        self.metrics = metrics
        self.log = get_logger()
        # The wallet and the orchestrator, waited for like the database (db.dependency) until first reached.
        # One budget for all three, from the pass's start.
        budget, since = db.dependency.budget, db.dependency.since
        self.wallet_up = Dependency("wallet", budget, since=since)
        self.orchestrator_up = Dependency("orchestrator", budget, since=since)

    async def _wait_for(
        self,
        dependency: Dependency,
        step: Callable[[], Awaitable[T]],
        what: str,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
    ) -> T:
        """`step`, waited for (core/waiting.py) while `dependency` was never reached in this pass;
        a failure after that is the caller's to report."""
        if dependency.reached:
            return await step()
        opened, result = await retry_until_up(
            step,
            dependency,
            log=self.log,
            tag=RECONCILE_TAG,
            backoff=Backoff(0.5, 10.0),
            retry_on=retry_on,
            describe=lambda exc: {"step": what, "error": repr(exc)[:500]},
            give_up_after=max(0.0, dependency.budget - dependency.waited()),
        )
        assert opened  # no stop event: it returns only once `step` succeeded
        return cast(T, result)

    async def _http(
        self, dependency: Dependency, call: Callable[[], Awaitable[httpx.Response]], what: str
    ) -> httpx.Response:
        async def answered() -> httpx.Response:
            response = await call()
            if response.status_code >= 500:  # the role answers, its database does not yet
                raise NotUpYet(f"HTTP {response.status_code} from {response.request.url}")
            return response

        return await self._wait_for(dependency, answered, what, (httpx.TransportError, NotUpYet))

    async def run_pass(self, age_seconds: float) -> PassSummary:
        summary = PassSummary()
        stale = (int(age_seconds * 1e6), self.settings.reconcile_batch)

        async def read_stale() -> list[dict[str, Any]]:
            await trail.ready(self.db)  # nothing is repaired that the trail could not record
            return await self.db.fetchrows(sql.SELECT_STALE_PENDING, stale)

        rows = await self._wait_for(self.db.dependency, read_stale, "read stale requests", DatabaseUnavailable)
        for row in rows:
            summary.examined += 1
            with bound(uuid=row["uuid"]):
                try:
                    await self._one(PaymentMessage.from_row(row), bool(row["in_outbox"]), summary)
                except Exception as exc:
                    summary.failures += 1
                    self.action.touch(row["uuid"], "failed")
                    self.metrics.reconcile_failures.inc()
                    self.log.error(RECONCILE_TAG, error=repr(exc))
        return summary

    async def _one(self, message: PaymentMessage, in_outbox: bool, summary: PassSummary) -> None:
        uuid = message.uuid
        if in_outbox:
            summary.left_in_outbox += 1
            return
        response = await self._http(
            self.wallet_up, lambda: self.wallet.get(f"/internal/inbox/{uuid}"), "ask the wallet"
        )
        if response.status_code == 404:
            await self.db.execute(sql.REENQUEUE_OUTBOX, (uuid, message.encode()))
            summary.reenqueued += 1
            self.action.touch(uuid, "reenqueued")
            self.metrics.reconcile_repairs.labels(kind="reenqueued").inc()
            self.log.warning("reconcile: message lost before the wallet; put back into the outbox")
            return
        response.raise_for_status()
        succeed = inbox_succeed(response.json())
        if succeed is None:
            summary.left_inbox_pending += 1
            return
        outcome = await self._finalize(Result(uuid, succeed))
        if outcome is Outcome.CONFLICT:
            summary.conflicts += 1
            summary.failures += 1
            self.action.touch(uuid, "conflict")
            self.metrics.reconcile_failures.inc()
            self.log.error(RECONCILE_TAG, reason="the request holds a different result than the inbox", inbox=succeed)
            return
        if not outcome.settles:
            raise NotFinalized(f"outcome {outcome.value}")
        summary.finalized_from_inbox += 1
        self.action.touch(uuid, "finalized_from_inbox")
        self.metrics.reconcile_repairs.labels(kind="finalized_from_inbox").inc()
        self.log.warning("reconcile: finalized a pending request from the wallet's inbox", succeed=succeed)

    async def _finalize(self, result: Result) -> Outcome:
        """The orchestrator's outcome for `result`, waited for like the wallet (NotUpYet while it
        does not answer); a failure no wait cures raises NotFinalized."""

        async def send() -> Outcome:
            (answer,) = await self.orchestrator.send([result])
            if isinstance(answer, Failure) and answer.unreachable:
                raise NotUpYet(answer.reason)
            self.orchestrator_up.up()  # it answered: a refusal is final, no wait cures it
            if isinstance(answer, Failure):
                raise NotFinalized(answer.reason)
            return answer

        return await self._wait_for(self.orchestrator_up, send, "finalize in the orchestrator", NotUpYet)


async def reconcile_main(settings: Settings, age: float | None = None) -> int:
    settings.require_safe_token()
    log = get_logger()
    metrics = Metrics("reconcile")
    headers = {"Authorization": f"Bearer {settings.internal_token}"}
    db = Database(
        settings.orchestrator_db_url, pool_size=2, timeout=settings.db_timeout, wait_budget=RECONCILE_WAIT_SECONDS
    )
    timeout = httpx.Timeout(settings.callback_timeout * 2)
    age_seconds = settings.reconcile_age if age is None else age
    action = trail.Action("reconcile", {"age_seconds": age_seconds})
    summary: PassSummary | Any = None
    try:
        async with (
            aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout.read)) as orch,
            httpx.AsyncClient(base_url=settings.wallet_url, headers=headers, timeout=timeout) as wallet,
        ):
            summary = await Reconciler(
                settings, db, ResultsClient(orch, settings.orchestrator_url), wallet, metrics, action
            ).run_pass(age_seconds)
        recorded = await _record(db, settings, action, summary)
    except Exception as exc:
        metrics.reconcile_failures.inc()
        log.error(RECONCILE_TAG, error=repr(exc))
        if db.dependency.reached:  # a pass that never reached its database has nowhere to record
            action.fail(exc)
            await _record(db, settings, action, None)
        return 1
    finally:
        await db.close()
        gateway = settings.pushgateway_url
        if gateway:
            try:
                push_to_gateway(gateway, job="chancepay-reconcile", registry=metrics.registry, timeout=5)
            except Exception as exc:
                log.error("[FAILED TO PUSH METRICS]", error=repr(exc), gateway=gateway)
    log.info("reconcile pass done", **dataclasses.asdict(summary))
    return 0 if summary.failures == 0 and recorded else 1


async def _record(db: Database, settings: Settings, action: trail.Action, summary: PassSummary | None) -> bool:
    """The pass's operator trail row (core/trail.py) when it repaired or failed something (a pass
    that raised: `summary` None, `action` already failed); False when it could not be written."""
    if summary is not None:
        if not action.outcomes and summary.failures == 0:
            return True  # nothing repaired, nothing failed: no row
        action.finish(1 if summary.failures else 0, dataclasses.asdict(summary))
    return await trail.record_or_log(db, action, trail.operator(settings.operator), get_logger())
