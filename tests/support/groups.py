"""Forcing a group commit of POST /payments (orchestrator/group.py) between real processes.

A lone payment is flushed at once, so a group only forms behind a commit in flight. `HeldGroup`
holds one in flight: a transaction of the test's own inserts a request row with an idempotency
key, uncommitted; a payment posted with that key is flushed alone and its INSERT waits on the
row's lock. Payments posted meanwhile wait (`chancepay_api_group_waiting`); `release()` rolls the
test's row back, the held payment commits, and the waiting ones are flushed as one group (with a
linger long enough, CHANCEPAY_API_GROUP_LINGER_SECONDS, that nothing leaves earlier).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pymysql

from tests.support.env import wait_until
from tests.support.roles import Stack

# A stack whose groups leave only behind a commit in flight or when full (no linger in a test).
GROUPED = {
    "CHANCEPAY_API_GROUP_SIZE": "64",
    "CHANCEPAY_API_GROUP_LINGER_SECONDS": "600",
    "CHANCEPAY_DB_TIMEOUT_SECONDS": "30",
}
HOLD_KEY = "hold-the-group"


def connect(stack: Stack) -> pymysql.connections.Connection:
    """A connection as the orchestrator's user, autocommit off (the test's own transaction)."""
    e = stack.env
    return pymysql.connect(
        host="127.0.0.1",
        port=e.mysql_port,
        user=e.orch_user,
        password=e.orch_password,
        database=e.orch_db,
        autocommit=False,
    )


def insert_keyed(conn: pymysql.connections.Connection, uuid: str, key: str, request_hash: str = "0" * 64) -> None:
    """A request row with `key`, in `conn`'s transaction (not committed)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO request (uuid, cus_id, amount, idempotency_key, request_hash) "
            "VALUES (%s, 'holder', 1.00, %s, %s)",
            (uuid, key, request_hash),
        )


class HeldGroup:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)
        self.conn = connect(stack)
        insert_keyed(self.conn, "00000000-0000-4000-8000-00000000b10c", HOLD_KEY)
        self.flushed_before = self.groups()
        self.held = self.pool.submit(self.stack.pay, "held", "1.00", **{"Idempotency-Key": HOLD_KEY})
        wait_until(lambda: self.groups() == self.flushed_before + 1, 30, what="the held payment's group in flight")
        self.posted: list[concurrent.futures.Future[httpx.Response]] = []

    def groups(self) -> int:
        return int(self.stack.orchestrator.metric("chancepay_api_group_size_count"))

    def waiting(self) -> int:
        return int(self.stack.orchestrator.metric("chancepay_api_group_waiting"))

    def post(self, cus_id: str, amount: str, key: str | None = None) -> concurrent.futures.Future[httpx.Response]:
        """POST /payments in a thread, and wait until it waits for the next group (arrival order
        is the order of the calls)."""
        headers: dict[str, Any] = {} if key is None else {"Idempotency-Key": key}
        self.posted.append(self.pool.submit(self.stack.pay, cus_id, amount, **headers))
        count = len(self.posted)
        wait_until(lambda: self.waiting() == count, 30, what=f"{count} payments waiting for the group")
        return self.posted[-1]

    def release(self) -> concurrent.futures.Future[httpx.Response]:
        """Roll the holding row back: the held payment commits (its answer is `self.held`), the
        waiting ones leave as one group."""
        self.conn.rollback()
        self.conn.close()
        return self.held

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
