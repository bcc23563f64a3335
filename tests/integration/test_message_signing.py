"""A message nobody published from the outbox deducts nothing (issue 10): the scanner signs, the
wallet verifies (x-chancepay-signature, HMAC-SHA256 of the body; CHANCEPAY_MESSAGE_KEY, and
CHANCEPAY_MESSAGE_KEY_PREVIOUS during a rotation)."""

from __future__ import annotations

import json

import pytest

from tests.support.env import MESSAGE_KEY, dead_lettered, wait_until
from tests.support.faults import publish_raw
from tests.support.roles import Stack

OTHER_KEY = "an-attacker-or-misconfigured-key-" + "z" * 16


def _forgery_is_refused(stack: Stack, uuid: str, key: str | None, expected_dlq: int) -> dict:
    body = json.dumps({"uuid": uuid, "cusId": "mallory", "amount": "999.00"}).encode()
    publish_raw(stack, body, message_id=uuid, key=key)
    alert = stack.wallet.wait_for_event("[PAYLOAD_CORRUPTION_ALERT]", uuid=uuid)
    assert alert["reason"].startswith("signature:"), alert
    wait_until(lambda: dead_lettered(stack.env) == expected_dlq, 10, what="forgery in the DLQ")
    return alert


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["unsigned", "wrong-key"])
def test_forged_message_for_an_unknown_uuid_deducts_nothing(stack: Stack, key) -> None:
    uuid = "0b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    _forgery_is_refused(stack, uuid, key, expected_dlq=1)
    assert stack.env.wallet_sql("SELECT COUNT(*) FROM inbox")[0][0] == 0
    assert stack.wallet.metric("chancepay_wallet_messages_total", outcome="corrupt") == 1


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["unsigned", "wrong-key"])
def test_forged_message_for_a_known_pending_uuid_deducts_nothing(make_stack, key) -> None:
    """The payment exists but was not published yet (no scanner): a forgery with its uuid must not
    become its deduction; the real, signed message later decides it once."""
    s = make_stack().start("orchestrator", "wallet")
    uuid = s.pay(cus_id="carol", amount="5.00").json()["uuid"]
    _forgery_is_refused(s, uuid, key, expected_dlq=1)
    assert s.env.wallet_sql("SELECT COUNT(*) FROM inbox")[0][0] == 0
    assert s.status(uuid) == "PENDING"
    s.role("scanner").start().wait_ready()
    s.wait_final([uuid], timeout=30)
    assert s.env.wallet_sql("SELECT cus_id, amount FROM inbox WHERE uuid=%s", (uuid,))[0][0] == "carol"


def test_key_rotation_previous_key_accepted_then_retired(make_stack) -> None:
    old, new = MESSAGE_KEY, "the-next-message-key-" + "n" * 24
    s = make_stack()
    # Step 1: the wallet learns the new key and keeps accepting the old one; the scanner still signs with old.
    s.role("orchestrator").start()
    s.role("scanner").start()
    s.role("wallet", CHANCEPAY_MESSAGE_KEY=new, CHANCEPAY_MESSAGE_KEY_PREVIOUS=old).start()
    for r in s.roles.values():
        r.wait_ready()
    first = s.pay_many(3, "old-key")
    s.wait_final(first, timeout=30)
    # Step 2: the scanner switches to the new key.
    s.scanner.stop()
    s.role("scanner", CHANCEPAY_MESSAGE_KEY=new).start().wait_ready()
    second = s.pay_many(3, "new-key")
    s.wait_final(second, timeout=30)
    assert not s.wallet.events("[PAYLOAD_CORRUPTION_ALERT]")
    # Step 3: the old key is retired: a message signed with it is now corrupt.
    s.wallet.stop()
    s.role("wallet", CHANCEPAY_MESSAGE_KEY=new).start().wait_ready()
    _forgery_is_refused(s, "1b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", old, expected_dlq=1)


def test_corruption_alert_names_the_uuid_when_one_is_readable(stack: Stack) -> None:
    uuid = "2b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    # Signed, readable uuid, but an amount that is not one.
    publish_raw(stack, json.dumps({"uuid": uuid, "cusId": "x", "amount": "1.234"}).encode(), message_id="m-1")
    alert = stack.wallet.wait_for_event("[PAYLOAD_CORRUPTION_ALERT]", uuid=uuid)
    assert "amount" in alert["reason"]
    # Unreadable body: the message_id still names it.
    other = "3b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    publish_raw(stack, b"\xff not json", message_id=other)
    stack.wallet.wait_for_event("[PAYLOAD_CORRUPTION_ALERT]", uuid=other)
    wait_until(lambda: dead_lettered(stack.env) == 2, 10, what="both in the DLQ")
