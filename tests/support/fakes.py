"""Shared fakes for the unit tier (no server): each stands in for one collaborator a role's
composition root injects, records what it was asked, and answers what the test scripted.

- FakeChannel: an AMQP channel (ack / nack / reject, basic_get from a scripted queue);
- FakeInbox: the wallet's inbox (deduct, park, the parked callbacks);
- FakeCallbacks: the wallet's callbacks (deliver -> a scripted Answer per try);
- FakeResults: the results client (send -> a scripted Answer per result);
- FakeOutbox, FakePublisher: the scanner's outbox and publisher;
- FakeDatabase: a Database for code that only runs statements (execute / fetch*), with its
  `dependency` (core/waiting.py) and a scripted schema readiness.
Messages: `message(body, headers, message_id, tag)` builds what aiormq hands a consumer.
`wallet_delivery(inbox, callbacks, log)`: a wallet Delivery wired to fakes as wallet/main.py wires
the real collaborators (the default message key, a coin that always succeeds, no hold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from pamqp import commands as spec

from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Answer, Outcome, PaymentMessage, Result
from chancepay.core.waiting import Dependency
from chancepay.scanner.policy import Failure as PublishFailure
from chancepay.scanner.policy import OutboxRow
from chancepay.wallet.delivery import Delivery
from chancepay.wallet.inbox import ParkedCallback
from chancepay.wallet.policy import Decision


class DatabaseDown(Exception):
    """What a fake raises for "the database does not answer" when a test wants a plain error."""


def wallet_delivery(inbox: Any, callbacks: Any, log: Any) -> Delivery:
    """A wallet Delivery on fakes: the default message key, a coin that always succeeds, a park
    delay of 0.2 s and no hold before a requeue."""
    return Delivery(
        inbox=inbox,
        callbacks=callbacks,
        metrics=Metrics("wallet"),
        crash=CrashPoints(frozenset()),
        message_keys=(Settings.from_env({}).message_key,),
        flip=lambda: True,
        park_delay=lambda: 0.2,
        database=Dependency("database", 600.0),
        hold=lambda outage: 0.0,
        log=log,
    )


def message(body: bytes, headers: dict[str, Any] | None = None, message_id: str | None = None, tag: int = 7) -> Any:
    """An aiormq DeliveredMessage, as far as a consumer reads it."""
    props = spec.Basic.Properties(headers=headers or {}, message_id=message_id)
    return SimpleNamespace(
        body=body, header=SimpleNamespace(properties=props), delivery=SimpleNamespace(delivery_tag=tag)
    )


class FakeChannel:
    def __init__(self, queue: Sequence[Any] = ()) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.queue = list(queue)  # what basic_get hands out, then GetEmpty
        self.is_closed = False
        self.consumers: dict[str, Any] = {}

    async def basic_ack(self, tag: Any) -> None:
        self.calls.append(("ack", tag))

    async def basic_nack(self, tag: Any, requeue: bool = True) -> None:
        self.calls.append(("nack", requeue))

    async def basic_reject(self, tag: Any, requeue: bool = True) -> None:
        self.calls.append(("reject", requeue))

    async def basic_get(self, queue: str, no_ack: bool = False) -> Any:
        if self.queue:
            return self.queue.pop(0)
        return SimpleNamespace(delivery=spec.Basic.GetEmpty())


class FakeInbox:
    """`decision`: what deduct returns, or an exception it raises (or a mapping uuid -> either);
    deduct_many (a window, wallet/window.py) answers each delivery the same way, or raises the
    first exception, recording each window's uuids in `windows`."""

    def __init__(
        self,
        decision: Decision | BaseException | Mapping[str, Decision | BaseException] | None = None,
        *,
        park_fails: bool = False,
        parked: Sequence[ParkedCallback] = (),
    ) -> None:
        self.decision = decision
        self.park_fails = park_fails
        self.deducted: list[tuple[str, bool]] = []
        self.windows: list[list[str]] = []
        self.parked: list[tuple[str, bool, str]] = []
        self.due = list(parked)  # what claim_parked hands out (once)
        self.forgotten: list[str] = []
        self.rescheduled: list[tuple[str, float, str]] = []

    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision:
        self.deducted.append((msg.uuid, flipped))
        decision = self.decision.get(msg.uuid) if isinstance(self.decision, Mapping) else self.decision
        if isinstance(decision, BaseException):
            raise decision
        assert decision is not None, "FakeInbox: no decision scripted"
        return decision

    async def deduct_many(self, window: Sequence[tuple[PaymentMessage, bool]]) -> list[Decision]:
        self.windows.append([msg.uuid for msg, _ in window])
        return [await self.deduct(msg, flipped) for msg, flipped in window]

    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None:
        if self.park_fails:
            raise DatabaseDown("database down")
        self.parked.append((uuid, succeed, reason))

    async def claim_parked(self, limit: int, lease_seconds: float) -> list[ParkedCallback]:
        rows, self.due = self.due[:limit], self.due[limit:]
        return rows

    async def forget_parked(self, uuids: list[str]) -> None:
        self.forgotten.extend(uuids)

    async def reschedule_parked(self, retries: list[tuple[str, float, str]]) -> None:
        self.rescheduled.extend(retries)

    async def parked_stats(self) -> tuple[int, float]:
        return len(self.due), 0.0


class FakeCallbacks:
    """deliver answers `answer` (or answer(result) when it is a function), recording each call."""

    def __init__(self, answer: Answer | Callable[[Result], Answer] = Outcome.APPLIED) -> None:
        self.answer = answer
        self.calls: list[tuple[Result, int | None]] = []

    async def deliver(self, result: Result, tries: int | None = None) -> Answer:
        self.calls.append((result, tries))
        return self.answer(result) if callable(self.answer) else self.answer


class FakeResults:
    """The results client: send answers from `answers` (a list per request, or one Answer for
    every result), recording each request's results."""

    def __init__(self, answers: Answer | list[list[Answer]] = Outcome.APPLIED) -> None:
        self.answers = answers
        self.requests: list[list[Result]] = []

    async def send(self, results: Sequence[Result]) -> list[Answer]:
        self.requests.append(list(results))
        if isinstance(self.answers, list):
            return self.answers.pop(0)
        return [self.answers] * len(results)


class FakeOutbox:
    def __init__(self, rows: Sequence[OutboxRow] = ()) -> None:
        self.rows = list(rows)
        self.deleted: list[str] = []
        self.failures: list[PublishFailure] = []

    async def claim(self, limit: int) -> list[OutboxRow]:
        rows, self.rows = self.rows[:limit], self.rows[limit:]
        return rows

    async def delete(self, uuids: list[str]) -> None:
        self.deleted.extend(uuids)

    async def record_failures(self, failures: list[PublishFailure]) -> None:
        self.failures.extend(failures)


class FakePublisher:
    """publish_all answers each row with `confirm(row)` (default: a broker ack)."""

    def __init__(self, confirm: Callable[[OutboxRow], Any] = lambda row: spec.Basic.Ack()) -> None:
        self.confirm = confirm
        self.published: list[OutboxRow] = []
        self.connection = SimpleNamespace(is_closed=False)

    def ready(self) -> bool:
        return not self.connection.is_closed

    async def connect(self) -> None:
        self.connection.is_closed = False

    async def publish_all(self, rows: list[OutboxRow]) -> list[Any]:
        self.published.extend(rows)
        return [self.confirm(row) for row in rows]

    async def redeclare(self) -> None:
        pass

    async def close(self) -> None:
        self.connection.is_closed = True


class FakeDatabase:
    """Statements are recorded; fetches answer from `rows` (statement -> rows, default none);
    `fail` (an exception) makes every statement raise it."""

    def __init__(
        self, rows: dict[str, list[Any]] | None = None, *, schema_ready: bool = True, fail: BaseException | None = None
    ) -> None:
        self.rows = rows or {}
        self.ready = schema_ready
        self.fail = fail
        self.executed: list[tuple[str, Any]] = []
        self.dependency = Dependency("database", 600.0)

    def _run(self, statement: str, args: Any) -> list[Any]:
        self.executed.append((statement, args))
        if self.fail is not None:
            raise self.fail
        self.dependency.up()
        return self.rows.get(statement, [])

    async def execute(self, statement: str, args: Any = None) -> int:
        return len(self._run(statement, args)) or 1

    async def fetchall(self, statement: str, args: Any = None) -> list[Any]:
        return self._run(statement, args)

    async def fetchrows(self, statement: str, args: Any = None) -> list[dict[str, Any]]:
        return self._run(statement, args)

    async def fetchone(self, statement: str, args: Any = None) -> Any:
        found = self._run(statement, args)
        return found[0] if found else None

    async def fetchrow(self, statement: str, args: Any = None) -> dict[str, Any] | None:
        found = self._run(statement, args)
        return found[0] if found else None

    async def schema_ready(self, required: int) -> bool:
        return self.ready

    async def ping(self) -> bool:
        return self.fail is None

    async def close(self) -> None:
        pass


class FakeHTTP:
    """An aiohttp.ClientSession as far as core/results.py and core/compat.py use it: `post`
    answers `route(url, body) -> (status, body bytes)` or raises what it returns as an exception."""

    def __init__(self, route: Callable[[str, Any], tuple[int, bytes] | BaseException]) -> None:
        self.route = route
        self.posts: list[tuple[str, Any]] = []

    def post(self, url: str, *, data: Any = None, json: Any = None, headers: Any = None) -> Any:
        body = json if json is not None else data
        self.posts.append((url, body))
        answer = self.route(url, body)
        return _Response(answer)


class _Response:
    def __init__(self, answer: tuple[int, bytes] | BaseException) -> None:
        self.answer = answer

    async def __aenter__(self) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        status, body = self.answer
        return SimpleNamespace(status=status, read=_returning(body))

    async def __aexit__(self, *exc: object) -> None:
        return None


def _returning(body: bytes) -> Callable[[], Any]:
    async def read() -> bytes:
        return body

    return read
