"""core/durability.py: the policy (which settings are safe, what an unsafe one does under dev,
prod and the override), the gate over a fake connection pool (metric, log lines, refusal), and
the broker hook's refusal, which is not retried like an unreachable broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chancepay.core import topology
from chancepay.core.broker import open_with_retry
from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.durability import (
    UNSAFE_TAG,
    Action,
    DurabilityGate,
    DurabilityRefused,
    DurabilityUnsafe,
    broker_findings,
    database_findings,
    decide,
)
from chancepay.core.metrics import Metrics
from chancepay.core.preflight import START_TAG
from tests.support.recording_log import RecordingLog

SAFE = {"innodb_flush_log_at_trx_commit": 1, "sync_binlog": 0, "log_bin": 0, "innodb_doublewrite": 1}


def unsafe_of(values: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {f.setting: (f.value, f.safe_value) for f in database_findings("orchestrator_db", values) if not f.safe}


def test_the_debian_defaults_are_safe() -> None:
    assert unsafe_of(SAFE) == {}


@pytest.mark.parametrize("flush", [0, 2])
def test_a_commit_not_flushed_at_commit_is_unsafe(flush: int) -> None:
    assert unsafe_of({**SAFE, "innodb_flush_log_at_trx_commit": flush}) == {
        "innodb_flush_log_at_trx_commit": (str(flush), "1")
    }


def test_mariadbs_flush_3_also_flushes_at_commit() -> None:
    assert unsafe_of({**SAFE, "innodb_flush_log_at_trx_commit": 3}) == {}


def test_sync_binlog_matters_only_with_a_binlog() -> None:
    assert unsafe_of({**SAFE, "log_bin": 1, "sync_binlog": 0}) == {"sync_binlog": ("0", "1")}
    assert unsafe_of({**SAFE, "log_bin": 1, "sync_binlog": 1}) == {}
    assert unsafe_of({**SAFE, "log_bin": 0, "sync_binlog": 100}) == {}


@pytest.mark.parametrize("value", ["0", "OFF", "fast", "DETECT_ONLY", None])
def test_doublewrite_off_fast_or_unknown_is_unsafe(value: Any) -> None:
    assert set(unsafe_of({**SAFE, "innodb_doublewrite": value})) == {"innodb_doublewrite"}


@pytest.mark.parametrize("value", [1, "ON", "DETECT_AND_RECOVER", b"ON"])
def test_doublewrite_on_in_its_spellings_is_safe(value: Any) -> None:
    assert unsafe_of({**SAFE, "innodb_doublewrite": value}) == {}


def test_the_declared_topology_is_safe_and_a_classic_queue_or_no_confirms_is_not() -> None:
    assert all(f.safe for f in broker_findings(topology.QUEUE_ARGUMENTS, topology.QUEUE_DURABLE, True))
    assert [f.setting for f in broker_findings(topology.QUEUE_ARGUMENTS, True, None)] == ["queue_type", "queue_durable"]
    bad = broker_findings({"x-queue-type": "classic"}, False, False)
    assert [(f.setting, f.value, f.safe) for f in bad] == [
        ("queue_type", "classic", False),
        ("queue_durable", "false", False),
        ("publisher_confirms", "off", False),
    ]


def test_decide_refuses_only_in_prod_without_the_override() -> None:
    unsafe = database_findings("wallet_db", {**SAFE, "innodb_flush_log_at_trx_commit": 2})
    assert decide(unsafe, env="prod", allow_unsafe=False) is Action.REFUSE
    assert decide(unsafe, env="prod", allow_unsafe=True) is Action.WARN
    assert decide(unsafe, env="dev", allow_unsafe=False) is Action.WARN
    assert decide(database_findings("wallet_db", SAFE), env="prod", allow_unsafe=False) is Action.PROCEED


# --------------------------------------------------------------------------- the gate over a fake pool
class Cursor:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.description: list[tuple[str]] = []
        self.row: tuple[Any, ...] | None = None

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, statement: str, args: Any = None) -> None:
        self.conn.statements.append(statement)
        if "innodb_flush_log_at_trx_commit" in statement:
            self.description = [(k,) for k in self.conn.server]
            self.row = tuple(self.conn.server.values())
        else:
            self.description, self.row = [("1",)], (1,)

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self.row


class Connection:
    def __init__(self, server: dict[str, Any]) -> None:
        self.server = server
        self.statements: list[str] = []
        self.closed = False

    def cursor(self) -> Cursor:
        return Cursor(self)

    async def commit(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class Pool:
    """A new connection whenever the last one was closed (what asyncmy's pool does)."""

    def __init__(self, server: dict[str, Any]) -> None:
        self.server = server
        self.made: list[Connection] = []

    async def acquire(self) -> Connection:
        if not self.made or self.made[-1].closed:
            self.made.append(Connection(self.server))
        return self.made[-1]

    def release(self, connection: Connection) -> None:
        return None


def gated_db(server: dict[str, Any], *, env: str, allow: bool = False) -> tuple[Database, DurabilityGate, Pool]:
    db = Database(DatabaseURL.parse("mysql://u:p@db.invalid:3306/x"))
    pool = Pool(server)
    db._pool = pool
    gate = DurabilityGate(env=env, allow_unsafe=allow, metrics=Metrics("orchestrator"), log=RecordingLog())
    gate.watch(db, "orchestrator_db")
    return db, gate, pool


def safe_metric(gate: DurabilityGate, setting: str) -> float:
    value = gate.metrics.registry.get_sample_value(
        "chancepay_durability_safe", {"component": "orchestrator_db", "setting": setting}
    )
    assert value is not None
    return value


def test_prod_refuses_an_unsafe_connection_and_names_the_setting() -> None:
    db, gate, pool = gated_db({**SAFE, "innodb_flush_log_at_trx_commit": 2}, env="prod")
    with pytest.raises(DurabilityUnsafe) as caught:
        asyncio.run(db.fetchone("SELECT 1"))
    assert isinstance(caught.value, DatabaseUnavailable)  # callers hold and retry it like an outage
    assert "innodb_flush_log_at_trx_commit is 2, safe is 1" in str(caught.value)
    assert pool.made[0].closed and pool.made[0].statements == [pool.made[0].statements[0]]  # no work on it
    assert safe_metric(gate, "innodb_flush_log_at_trx_commit") == 0
    assert safe_metric(gate, "innodb_doublewrite") == 1
    (line,) = gate.log.tagged(UNSAFE_TAG)
    assert (line["setting"], line["value"], line["safe_value"]) == ("innodb_flush_log_at_trx_commit", "2", "1")


def test_the_start_check_turns_a_refusal_into_failed_to_start_with_exit_2() -> None:
    _, gate, _ = gated_db({**SAFE, "innodb_flush_log_at_trx_commit": 2}, env="prod")
    with pytest.raises(DurabilityRefused) as caught:
        asyncio.run(gate.at_start(asyncio.Event()))
    refusal = caught.value
    assert refusal.tag == START_TAG and refusal.exit_code == 2
    assert refusal.fields["setting"] == "innodb_flush_log_at_trx_commit"
    assert (refusal.fields["value"], refusal.fields["safe_value"]) == ("2", "1")


@pytest.mark.parametrize(
    ("env", "allow", "why"),
    [("prod", True, "CHANCEPAY_ALLOW_UNSAFE_DURABILITY=1"), ("dev", False, "CHANCEPAY_ENV=dev")],
)
def test_the_override_and_dev_warn_once_and_go_on(env: str, allow: bool, why: str) -> None:
    db, gate, pool = gated_db({**SAFE, "innodb_flush_log_at_trx_commit": 2}, env=env, allow=allow)
    assert asyncio.run(gate.at_start(asyncio.Event())) is True
    for _ in range(3):
        assert asyncio.run(db.fetchone("SELECT 1")) == (1,)
    assert len(pool.made) == 1 and not pool.made[0].closed
    assert safe_metric(gate, "innodb_flush_log_at_trx_commit") == 0  # the alert still says so
    warnings = gate.log.tagged("durability setting unsafe")
    assert [w["allowed_by"] for w in warnings] == [why]  # once, not per transaction
    assert gate.log.tagged(UNSAFE_TAG) == []


def test_a_connection_is_read_once_then_again_after_the_recheck_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    db, gate, pool = gated_db(dict(SAFE), env="prod")
    clock = [1000.0]
    monkeypatch.setattr("chancepay.core.db.time.monotonic", lambda: clock[0])
    asyncio.run(db.fetchone("SELECT 1"))
    asyncio.run(db.fetchone("SELECT 1"))
    reads = [s for s in pool.made[0].statements if "innodb" in s]
    assert len(reads) == 1
    pool.server["innodb_flush_log_at_trx_commit"] = 0  # SET GLOBAL on the live server
    clock[0] += 61
    with pytest.raises(DurabilityUnsafe):
        asyncio.run(db.fetchone("SELECT 1"))
    assert safe_metric(gate, "innodb_flush_log_at_trx_commit") == 0
    pool.server["innodb_flush_log_at_trx_commit"] = 1  # fixed: the next connection passes, no restart
    assert asyncio.run(db.fetchone("SELECT 1")) == (1,)
    assert safe_metric(gate, "innodb_flush_log_at_trx_commit") == 1


def test_a_broker_refusal_ends_the_retries_at_once() -> None:
    gate = DurabilityGate(env="prod", allow_unsafe=False, metrics=Metrics("scanner"), log=RecordingLog())
    attempts = []

    class Channel:
        publisher_confirms = False

    async def open_once() -> None:
        attempts.append(1)
        gate.publisher_declared(Channel())

    with pytest.raises(DurabilityRefused) as caught:
        asyncio.run(open_with_retry(asyncio.Event(), open_once, log=RecordingLog(), tag="[T]"))
    assert attempts == [1]
    assert caught.value.fields["setting"] == "publisher_confirms"


def test_the_declared_broker_is_reported_safe() -> None:
    gate = DurabilityGate(env="prod", allow_unsafe=False, metrics=Metrics("wallet"), log=RecordingLog())
    gate.consumer_declared(object())
    for setting in ("queue_type", "queue_durable"):
        assert (
            gate.metrics.registry.get_sample_value(
                "chancepay_durability_safe", {"component": "broker", "setting": setting}
            )
            == 1
        )


class DownPool:
    async def acquire(self) -> None:
        raise OSError("connection refused")

    def release(self, connection: object) -> None:
        return None


def test_the_worker_does_not_wait_for_the_database_check() -> None:
    """A scanner must say `broker not reachable yet` while its database is down too."""
    db, gate, _ = gated_db(dict(SAFE), env="prod")
    db._pool = DownPool()
    started = asyncio.Event()

    async def worker(stop: asyncio.Event) -> None:
        started.set()
        await stop.wait()

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(gate.gated(worker)(stop))
        await asyncio.wait_for(started.wait(), timeout=2)
        stop.set()
        await asyncio.wait_for(task, timeout=2)

    asyncio.run(go())


def test_a_refusal_at_start_stops_the_worker_and_is_raised() -> None:
    _, gate, _ = gated_db({**SAFE, "innodb_flush_log_at_trx_commit": 0}, env="prod")
    stopped = []

    async def worker(stop: asyncio.Event) -> None:
        await stop.wait()
        stopped.append(True)

    with pytest.raises(DurabilityRefused):
        asyncio.run(asyncio.wait_for(gate.gated(worker)(asyncio.Event()), timeout=5))
    assert stopped == [True]


def test_a_worker_failing_first_is_raised_and_the_check_cancelled() -> None:
    db, gate, _ = gated_db(dict(SAFE), env="prod")
    db._pool = DownPool()

    async def worker(stop: asyncio.Event) -> None:
        raise RuntimeError("broker connection lost")

    with pytest.raises(RuntimeError, match="broker connection lost"):
        asyncio.run(asyncio.wait_for(gate.gated(worker)(asyncio.Event()), timeout=5))
