"""Group commit's policy (orchestrator/group.py) on a fake commit: a lone item is flushed at once,
arrivals during a commit form the next group, a full group goes at once, linger bounds the wait,
every caller gets its own outcome, a failed commit fails its whole group and only it. Then the
service's group (PaymentService.create_group) on a fake database: keys inside a group, a database
failure, one bad item, a lone payment."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest

from chancepay.core import sql
from chancepay.core.db import DatabaseUnavailable, IntegrityError
from chancepay.core.metrics import Metrics
from chancepay.core.payment import parse_details
from chancepay.orchestrator.group import GroupCommit
from chancepay.orchestrator.service import IdempotencyKeyReused, NewPayment, PaymentService


class FakeCommit:
    """Records each group; holds every commit until released (`gate`), then answers item * 10,
    or an exception for items < 0; `fail` makes the next commit raise."""

    def __init__(self, *, held: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.fail: BaseException | None = None

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.groups.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        return [ValueError(i) if i < 0 else i * 10 for i in items]


def run(case: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """The unit tier has no async plugin: each case runs in its own event loop."""

    @functools.wraps(case)
    def test() -> None:
        asyncio.run(case())

    return test


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@run
async def test_a_lone_item_is_flushed_at_once() -> None:
    commit = FakeCommit()
    group = GroupCommit(commit, size=32, linger=60)
    assert await asyncio.wait_for(group.submit(1), 1) == 10
    assert commit.groups == [[1]]


@run
async def test_a_lone_item_commits_in_its_callers_task() -> None:
    """Nothing in flight, nothing waiting: no task of the group's own, no hop (the low-rate path)."""
    callers: list[asyncio.Task[Any] | None] = []

    async def commit(items: list[int]) -> list[int]:
        callers.append(asyncio.current_task())
        return [i * 10 for i in items]

    group = GroupCommit(commit, size=32, linger=60)
    caller = asyncio.create_task(group.submit(1))
    assert await asyncio.wait_for(caller, 1) == 10
    assert callers == [caller] and group.in_flight == 0


@run
async def test_a_cancelled_lone_caller_lets_the_next_group_go() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=60)
    alone = asyncio.create_task(group.submit(1))
    await _settle()
    waiting = asyncio.create_task(group.submit(2))
    await _settle()
    assert group.in_flight == 1 and group.waiting == 1
    alone.cancel()
    await _settle()
    assert group.in_flight == 1 and commit.groups == [[1], [2]], "the waiting item left when the lone one ended"
    commit.gate.set()
    assert await asyncio.wait_for(waiting, 1) == 20
    assert alone.cancelled()


@run
async def test_a_lone_items_failure_is_its_callers() -> None:
    commit = FakeCommit()
    group = GroupCommit(commit, size=32, linger=60)
    with pytest.raises(ValueError):
        await asyncio.wait_for(group.submit(-1), 1)
    commit.fail = ConnectionError("down")
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(group.submit(1), 1)
    assert group.in_flight == 0 and await asyncio.wait_for(group.submit(2), 1) == 20


@run
async def test_arrivals_during_a_commit_form_the_next_group() -> None:
    commit = FakeCommit(held=True)
    sizes: list[int] = []
    group = GroupCommit(commit, size=32, linger=60, observe=sizes.append)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    rest = [asyncio.create_task(group.submit(i)) for i in range(2, 7)]
    await _settle()
    assert commit.groups == [[1]] and group.waiting == 5 and group.in_flight == 1
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 1) == [10, 20, 30, 40, 50, 60]
    assert commit.groups == [[1], [2, 3, 4, 5, 6]]
    assert sizes == [1, 5]


@run
async def test_a_full_group_goes_without_waiting_for_the_one_in_flight() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=3, linger=60)
    tasks = [asyncio.create_task(group.submit(i)) for i in range(1, 8)]
    await _settle()
    assert commit.groups == [[1], [2, 3, 4], [5, 6, 7]]
    assert group.in_flight == 3
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [10, 20, 30, 40, 50, 60, 70]


@run
async def test_linger_bounds_the_wait_behind_a_slow_commit() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=0.01)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    second = asyncio.create_task(group.submit(2))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(commit.groups) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert commit.groups == [[1], [2]], "the second group left after the linger, the first still in flight"
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [10, 20]


@run
async def test_each_caller_gets_its_own_outcome() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    good, bad = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(-3))
    commit.gate.set()
    assert await asyncio.wait_for(first, 1) == 10
    assert await asyncio.wait_for(good, 1) == 20
    with pytest.raises(ValueError):
        await asyncio.wait_for(bad, 1)
    assert commit.groups == [[1], [2, -3]]


@run
async def test_a_failed_commit_fails_its_whole_group_and_only_it() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=2, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    second = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    await _settle()
    commit.fail = ConnectionError("down")  # the first commit to end raises: the first group's
    commit.gate.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(first, 1)
    assert await asyncio.wait_for(asyncio.gather(*second), 1) == [20, 30]


@run
async def test_a_caller_gone_before_the_flush_writes_nothing() -> None:
    commit = FakeCommit(held=True)
    group = GroupCommit(commit, size=32, linger=60)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    gone, kept = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(3))
    await _settle()
    gone.cancel()
    await _settle()
    commit.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, kept), 1) == [10, 30]
    assert commit.groups == [[1], [3]]


def test_size_and_linger_are_checked() -> None:
    with pytest.raises(ValueError):
        GroupCommit(FakeCommit(), size=0, linger=0)


# --------------------------------------------------------------------------- the service's group
class GroupDatabase:
    """A Database for PaymentService: `run(work)` hands `work` a cursor that records statements;
    the key look-up answers `stored` rows; a statement starting with `fail_on` raises `fail`."""

    def __init__(
        self, stored: list[dict[str, Any]] | None = None, fail_on: str = "", fail: BaseException | None = None
    ) -> None:
        self.stored = stored or []
        self.fail_on, self.fail = fail_on, fail
        self.transactions: list[list[tuple[str, Any]]] = []

    async def run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        statements: list[tuple[str, Any]] = []
        self.transactions.append(statements)
        db = self

        class Cursor:
            description: list[tuple[str]] = []
            rows: list[tuple[Any, ...]] = []

            async def execute(self, statement: str, args: Any = None) -> None:
                statements.append((statement, args))
                if db.fail is not None and db.fail_on and statement.startswith(db.fail_on):
                    raise db.fail
                if statement.startswith("SELECT"):
                    names = list(db.stored[0]) if db.stored else ["uuid"]
                    self.description = [(n,) for n in names]
                    self.rows = [tuple(r[n] for n in names) for r in db.stored]

            async def fetchall(self) -> list[tuple[Any, ...]]:
                return self.rows

        return await work(Cursor())

    async def fetchrow(self, statement: str, args: Any = None) -> dict[str, Any] | None:
        return next((r for r in self.stored if r["idempotency_key"] == args[0]), None)


def _service(db: GroupDatabase) -> PaymentService:
    return PaymentService(db, Metrics("orchestrator"), group_size=8, group_linger=0)


def _item(amount: str, key: str | None = None, client: int = 0) -> NewPayment:
    return NewPayment.of(parse_details({"cusId": "alice", "amount": amount}), key, client)


def _stored(item: NewPayment) -> dict[str, Any]:
    return {
        "uuid": "00000000-0000-4000-8000-000000000001",
        "cus_id": "alice",
        "amount": Decimal(item.details["amount"]),
        "succeed": None,
        "created_at": None,
        "finalized_at": None,
        "request_hash": item.fingerprint,
        "idempotency_key": item.key,
        "client_id": item.client,
    }


def test_keys_inside_a_group_are_answered_as_across_groups() -> None:
    stored_key = _item("1.00", "stored")
    db = GroupDatabase([_stored(stored_key)])
    items = [
        _item("1.00", "k"),
        _item("1.00", "k"),
        _item("2.00", "k"),
        _item("1.00", "stored"),
        _item("2.00", "stored"),
        _item("3.00"),
    ]
    answers = asyncio.run(_service(db).create_group(items))
    (first, replayed_first), (replay, replayed) = answers[0], answers[1]
    assert not replayed_first and replayed and replay.uuid == first.uuid == items[0].uuid
    assert isinstance(answers[2], IdempotencyKeyReused)
    assert answers[3][0].uuid == "00000000-0000-4000-8000-000000000001" and answers[3][1] is True
    assert isinstance(answers[4], IdempotencyKeyReused)
    assert answers[5] == (items[5].accepted(), False)
    (transaction,) = db.transactions
    assert [s.split(" (")[0].split(" FROM")[0] for s, _ in transaction] == [
        "SELECT uuid, cus_id, amount, succeed, created_at, finalized_at, request_hash, idempotency_key, client_id",
        "INSERT INTO request",
        "INSERT INTO outbox",
    ]
    inserted = transaction[2][1][::2]
    assert sorted(inserted) == sorted([items[0].uuid, items[5].uuid]), "one row per new key, and the keyless"


def test_a_database_failure_fails_the_whole_group_and_runs_nothing_alone() -> None:
    db = GroupDatabase(fail_on="INSERT INTO outbox", fail=DatabaseUnavailable("gone"))
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(_service(db).create_group([_item("1.00"), _item("2.00", "k")]))
    assert len(db.transactions) == 1


def test_one_bad_item_rolls_the_group_back_and_each_runs_alone() -> None:
    duplicate = IntegrityError(1062, "Duplicate entry 'k' for key 'uq_request_idempotency_key'")
    db = GroupDatabase(
        fail_on="INSERT INTO request (uuid, cus_id, amount, idempotency_key, request_hash, client_id) VALUES "
        "(%s, %s, %s, %s, %s, %s), ",
        fail=duplicate,
    )  # the multi-row INSERT only
    items = [_item("1.00"), _item("2.00"), _item("3.00", "k")]
    answers = asyncio.run(_service(db).create_group(items))
    assert answers == [(i.accepted(), False) for i in items]
    assert len(db.transactions) == 1 + 3, "the group, then each payment in its own transaction"


def test_a_lone_payment_takes_the_per_payment_transaction() -> None:
    db = GroupDatabase()
    item = _item("1.00", "k")
    assert asyncio.run(_service(db).create_group([item])) == [(item.accepted(), False)]
    (transaction,) = db.transactions
    assert [s for s, _ in transaction] == [sql.INSERT_OWNED_REQUEST, sql.INSERT_OUTBOX], "no key look-up first"


def test_a_key_inside_a_group_is_its_clients_own() -> None:
    """The same Idempotency-Key from two clients: two payments; a client's stored key replays for
    that client only (another client's row with the key is not an answer)."""
    stored_key = _item("1.00", "k", client=1)
    db = GroupDatabase([_stored(stored_key)])
    items = [_item("1.00", "k", client=1), _item("1.00", "k", client=2), _item("5.00", "k", client=3)]
    answers = asyncio.run(_service(db).create_group(items))
    assert answers[0][1] is True and answers[0][0].uuid == "00000000-0000-4000-8000-000000000001"
    assert answers[1] == (items[1].accepted(), False) and answers[2] == (items[2].accepted(), False)
    (transaction,) = db.transactions
    request_values = transaction[1][1]
    assert request_values[0::6] == [items[1].uuid, items[2].uuid], "one row per client's key"
    assert request_values[5::6] == [2, 3], "each new row owned by its client"
