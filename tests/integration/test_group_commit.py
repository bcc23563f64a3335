"""Group commit of POST /payments (orchestrator/group.py, PaymentService.create_group) between real
processes: a group is one transaction, idempotency keys behave inside a group exactly as across
groups, and one bad item fails no neighbour."""

from __future__ import annotations

from typing import Any

import httpx

from chancepay.core.payment import parse_details
from chancepay.orchestrator.service import request_fingerprint
from tests.support.env import admin_connect, wait_until
from tests.support.groups import GROUPED, HeldGroup, connect, insert_keyed

X = ("alice", "10.00")
Y = ("alice", "99.99")  # same key, another body


def _outcome(r: httpx.Response) -> tuple[Any, ...]:
    """What a caller can see: status, error code or (uuid, replayed, body)."""
    if r.status_code != 202:
        return r.status_code, r.json()["error"]["code"]
    return 202, r.json()["uuid"], r.headers.get("idempotent-replayed") == "true", r.json()


def _sequence(prefix: str) -> list[tuple[tuple[str, str], str | None]]:
    """One payment per line: (body, key). The key `prefix-stored` was used before (same body X)."""
    return [
        (X, f"{prefix}-a"),
        (X, f"{prefix}-a"),
        (Y, f"{prefix}-a"),
        (X, f"{prefix}-stored"),
        (Y, f"{prefix}-stored"),
        (X, None),
    ]


def _check(prefix: str, outcomes: list[tuple[Any, ...]], stored_uuid: str) -> None:
    created, replay, refused, stored_replay, stored_refused, keyless = outcomes
    assert created[0] == 202 and created[2] is False
    assert replay == (202, created[1], True, created[3]), "the same key and body: the first answer again"
    assert refused == (422, "idempotency_key_reused")
    assert stored_replay[:3] == (202, stored_uuid, True)
    assert stored_refused == (422, "idempotency_key_reused")
    assert keyless[0] == 202 and keyless[2] is False and keyless[1] not in (created[1], stored_uuid)


def test_an_idempotency_key_repeated_inside_one_group_behaves_as_across_groups(make_stack) -> None:
    s = make_stack(**GROUPED).start("orchestrator")
    stored = {p: s.pay(*X, **{"Idempotency-Key": f"{p}-stored"}).json()["uuid"] for p in ("across", "inside")}

    across = [
        _outcome(s.pay(*body, **({"Idempotency-Key": key} if key else {}))) for body, key in _sequence("across")
    ]  # one after the other: each its own group
    _check("across", across, stored["across"])

    held = HeldGroup(s)
    try:
        posted = [held.post(*body, key=key) for body, key in _sequence("inside")]
        assert _outcome(held.release().result(timeout=30))[0] == 202
        inside = [_outcome(f.result(timeout=30)) for f in posted]
    finally:
        held.close()
    _check("inside", inside, stored["inside"])
    assert held.groups() == held.flushed_before + 2, "the six payments were one group"
    assert s.orchestrator.metric("chancepay_api_group_size_sum") >= 6

    # What is stored is the same on both sides: one row per key, and the keyless payment.
    for prefix in ("across", "inside"):
        rows = s.env.orch_sql(
            "SELECT idempotency_key, COUNT(*) FROM request WHERE idempotency_key LIKE %s "
            "GROUP BY idempotency_key ORDER BY 1",
            (f"{prefix}-%",),
        )
        assert rows == [(f"{prefix}-a", 1), (f"{prefix}-stored", 1)]
    keyless = {across[5][1], inside[5][1]}
    assert len(s.env.orch_sql(f"SELECT uuid FROM request WHERE uuid IN ({', '.join(['%s'] * 2)})", list(keyless))) == 2
    outbox = s.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0]
    requests = s.env.orch_sql("SELECT COUNT(*) FROM request")[0][0]
    assert outbox == requests, "every request row came with its outbox row"


def _lock_waits(database: str) -> int:
    """INSERTs into `database`'s request table waiting for a lock (the server is shared)."""
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p "
            "ON p.ID = t.trx_mysql_thread_id WHERE t.trx_state = 'LOCK WAIT' AND p.DB = %s "
            "AND t.trx_query LIKE 'INSERT INTO request%%'",
            (database,),
        )
        return int(cur.fetchone()[0])


def test_one_bad_item_fails_no_neighbour(make_stack) -> None:
    """A key another request commits while the group's INSERT runs (the group could not know it)
    fails that INSERT: the group is rolled back and each payment runs alone: the neighbours are
    accepted, the key's payment answered as across groups."""
    s = make_stack(**GROUPED).start("orchestrator")
    other = connect(s)
    other_body = {"cusId": "bob", "amount": "5.00"}
    insert_keyed(
        other, "00000000-0000-4000-8000-0000000000be", "raced", request_fingerprint(parse_details(other_body))
    )  # not committed yet
    held = HeldGroup(s)
    try:
        neighbours = [held.post(f"n-{i}", f"{i + 1}.00") for i in range(3)]
        raced = held.post(*Y, key="raced")
        same_body = held.post("bob", "5.00", key="raced")
        assert held.release().result(timeout=30).status_code == 202
        wait_until(lambda: _lock_waits(s.env.orch_db) == 1, 30, what="the group's INSERT waiting on the raced key")
        other.commit()
        other.close()
        answers = [_outcome(f.result(timeout=30)) for f in neighbours]
        assert _outcome(raced.result(timeout=30)) == (422, "idempotency_key_reused")
        replay = _outcome(same_body.result(timeout=30))
    finally:
        held.close()
    assert all(a[0] == 202 and a[2] is False for a in answers), answers
    assert replay[:3] == (202, "00000000-0000-4000-8000-0000000000be", True)
    uuids = [a[1] for a in answers]
    assert len(s.env.orch_sql("SELECT uuid FROM request WHERE uuid IN (%s, %s, %s)", uuids)) == 3
    assert len(s.env.orch_sql("SELECT uuid FROM outbox WHERE uuid IN (%s, %s, %s)", uuids)) == 3
    assert s.env.orch_sql("SELECT COUNT(*) FROM request WHERE idempotency_key = 'raced'")[0][0] == 1


def test_size_one_is_one_transaction_per_payment(make_stack) -> None:
    s = make_stack(CHANCEPAY_API_GROUP_SIZE="1").start("orchestrator")
    r = s.pay(*X, **{"Idempotency-Key": "one"})
    again = s.pay(*X, **{"Idempotency-Key": "one"})
    assert r.status_code == again.status_code == 202 and again.json()["uuid"] == r.json()["uuid"]
    assert again.headers["idempotent-replayed"] == "true"
    assert s.orchestrator.metric("chancepay_api_group_size_count") == 0, "no group was ever formed"
