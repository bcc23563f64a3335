"""The payment declaration (core/payment.py) is the one home of a payment: adding a field there
carries it into the API's validation, the OpenAPI document, the message codec, the SQL column
lists and the row mapping without other edits. Proved on a scratch copy of the package."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chancepay.core import payment, sql
from chancepay.core.codec import CUS_ID_RE, InvalidField, InvalidPayload
from chancepay.core.payment import (
    MissingFields,
    Outcome,
    Payment,
    PaymentMessage,
    Result,
    Status,
    UnknownFields,
    parse_details,
)
from chancepay.orchestrator.openapi import OPENAPI
from chancepay.orchestrator.service import request_fingerprint

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"
UUID = "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6b"


def test_request_rules() -> None:
    assert parse_details({"cusId": "alice", "amount": "12.5"}) == {"cus_id": "alice", "amount": Decimal("12.50")}
    with pytest.raises(MissingFields) as missing:
        parse_details({"cusId": "alice"})
    assert missing.value.names == ["amount"]
    with pytest.raises(UnknownFields) as unknown:
        parse_details({"cusId": "alice", "amount": "1", "note": "x"})
    assert unknown.value.names == ["note"]
    with pytest.raises(InvalidField) as invalid:
        parse_details({"cusId": "a b", "amount": "1"})
    assert invalid.value.field == "cusId"


def test_status_is_the_three_state_result() -> None:
    assert [Status.of(v) for v in (None, True, False)] == [Status.PENDING, Status.SUCCEEDED, Status.FAILED]


def test_openapi_uses_the_rules_the_api_enforces() -> None:
    schemas = OPENAPI["components"]["schemas"]
    request = schemas["PaymentRequest"]
    assert request["required"] == ["cusId", "amount"] and request["additionalProperties"] is False
    assert request["properties"]["cusId"]["pattern"] == f"^{CUS_ID_RE.pattern}$"
    for name in ("PaymentAccepted", "Payment"):
        assert {"uuid", "cusId", "amount", "status"} <= set(schemas[name]["required"])
        assert schemas[name]["properties"]["status"]["enum"] == ["PENDING", "SUCCEEDED", "FAILED"]


def test_rows_are_read_by_column_name() -> None:
    row = {
        "finalized_at": None,
        "amount": Decimal("3.10"),
        "uuid": UUID,
        "created_at": None,
        "succeed": 1,
        "cus_id": "bob",
        "request_hash": "ignored",
    }
    p = Payment.from_row(row)
    assert (p.uuid, p.details, p.status) == (UUID, {"cus_id": "bob", "amount": Decimal("3.10")}, Status.SUCCEEDED)
    assert p.accepted_json() == {"uuid": UUID, "cusId": "bob", "amount": "3.10", "status": "SUCCEEDED"}
    assert p.message() == PaymentMessage.from_row(row)


def test_statements_take_their_columns_from_the_declaration() -> None:
    assert "(uuid, cus_id, amount, idempotency_key, request_hash)" in sql.INSERT_REQUEST
    assert sql.INSERT_REQUEST.count("%s") == 2 + len(payment.COLUMNS) + 1
    assert sql.INSERT_INBOX_DECIDED.count("%s") == 1 + len(payment.COLUMNS) + 1
    assert "SELECT uuid, cus_id, amount, succeed" in sql.SELECT_REQUEST


def test_idempotency_fingerprint_is_unchanged_by_the_declaration() -> None:
    """Rows stored before the payment module hold sha256("cusId\\namount"): a retried request with
    the same Idempotency-Key must still match them after the upgrade."""
    details = {"cus_id": "alice", "amount": Decimal("12.5")}
    assert request_fingerprint(details) == hashlib.sha256(b"alice\n12.50").hexdigest()


def test_the_message_is_exactly_the_declared_fields() -> None:
    msg = PaymentMessage(UUID, {"cus_id": "alice", "amount": Decimal("12.50")})
    assert msg.encode() == b'{"uuid":"%s","cusId":"alice","amount":"12.50"}' % UUID.encode()
    assert PaymentMessage.decode(msg.encode()) == msg
    with pytest.raises(InvalidPayload):
        PaymentMessage.decode(b'{"uuid":"%s","cusId":"alice"}' % UUID.encode())


# --------------------------------------------------------------------------- the result
def test_the_nullable_succeed_column_maps_in_one_place() -> None:
    assert [payment.succeed_from_column(v) for v in (None, 0, 1, True)] == [None, False, True, True]


def test_outcomes_know_whether_they_settle_and_whether_a_retry_helps() -> None:
    assert [o for o in Outcome if o.settles] == [Outcome.APPLIED, Outcome.REPEATED]
    assert not any(o.retry_helps for o in Outcome)


def test_result_bodies_written_by_the_wallet_are_read_by_the_orchestrator() -> None:
    sent = [Result(UUID, True), Result(UUID.replace("0b", "1b", 1), False)]
    assert payment.parse_results(json.loads(payment.dump_results(sent))) == sent
    assert payment.parse_result({"succeed": False}, UUID) == Result(UUID, False)
    answer = payment.dump_outcomes(
        [(sent[0].uuid, Outcome.APPLIED, Status.SUCCEEDED), (sent[1].uuid, Outcome.UNKNOWN, None)]
    )
    assert answer["results"][1] == {"uuid": sent[1].uuid, "outcome": "unknown", "status": None}
    assert payment.load_outcomes(json.dumps(answer).encode(), sent) == [Outcome.APPLIED, Outcome.UNKNOWN]
    with pytest.raises(InvalidPayload):
        payment.load_outcomes(json.dumps(answer).encode(), sent[::-1])
    with pytest.raises(InvalidPayload):
        payment.load_outcomes(b'{"results": [{"uuid": "x", "outcome": "maybe"}]}', [Result("x", True)])


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"results": []}, "invalid_field"),
        ({"results": [{"uuid": UUID, "succeed": 1}]}, "invalid_field"),
        ({"results": [{"uuid": UUID.upper(), "succeed": True}]}, "invalid_field"),
        ({"results": [{"uuid": UUID, "succeed": True}, {"uuid": UUID, "succeed": False}]}, "duplicate_uuid"),
        ({"results": [{"uuid": UUID, "succeed": True}] * (payment.MAX_RESULTS + 1)}, "invalid_field"),
        ({"results": [{"uuid": UUID, "succeed": True}], "x": 1}, "invalid_field"),
    ],
)
def test_bad_result_batches_are_refused_with_their_code(doc: dict[str, Any], code: str) -> None:
    with pytest.raises(payment.InvalidResults) as refused:
        payment.parse_results(doc)
    assert refused.value.code == code


def test_openapi_takes_the_result_schemas_from_the_declaration() -> None:
    schemas = OPENAPI["components"]["schemas"]
    outcome = schemas["ResultBatchOutcomes"]["properties"]["results"]["items"]["properties"]["outcome"]
    assert outcome["enum"] == [o.value for o in Outcome]
    assert schemas["ResultBatch"]["properties"]["results"]["maxItems"] == payment.MAX_RESULTS


# The whole of step 1 of the recipe (README "Adding a field to a payment"): one more entry in FIELDS.
NEW_FIELD = """
    Field(
        "memo", "memo", parse_memo, str, str,
        {"type": "string", "maxLength": 20},
        "VARCHAR(20) NULL",
        "A note for the customer's statement",
    ),
"""
PARSE_MEMO = """

def parse_memo(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 20:
        raise InvalidField("memo", "must be a string of at most 20 characters")
    return value

"""

CHECK = textwrap.dedent("""
    from decimal import Decimal
    import pytest
    from chancepay.core import payment, sql
    from chancepay.core.codec import InvalidPayload
    from chancepay.core.payment import MissingFields, Payment, PaymentMessage, parse_details
    from chancepay.orchestrator.openapi import OPENAPI
    from chancepay.orchestrator.service import request_fingerprint
    assert payment.__file__.startswith({scratch!r}), payment.__file__

    # the API's validation and the OpenAPI document
    details = parse_details({{"cusId": "alice", "amount": "1.50", "memo": "rent"}})
    assert details == {{"cus_id": "alice", "amount": Decimal("1.50"), "memo": "rent"}}
    with pytest.raises(MissingFields):
        parse_details({{"cusId": "alice", "amount": "1.50"}})
    request = OPENAPI["components"]["schemas"]["PaymentRequest"]
    assert request["required"] == ["cusId", "amount", "memo"]
    assert request["properties"]["memo"]["maxLength"] == 20
    assert "memo" in OPENAPI["components"]["schemas"]["Payment"]["required"]

    # the message codec
    msg = PaymentMessage("{uuid}", details)
    assert b'"memo":"rent"' in msg.encode() and PaymentMessage.decode(msg.encode()) == msg
    with pytest.raises(InvalidPayload):
        PaymentMessage.decode(b'{{"uuid":"{uuid}","cusId":"alice","amount":"1.50"}}')

    # the statements and the row mapping
    assert "(uuid, cus_id, amount, memo, idempotency_key, request_hash)" in sql.INSERT_REQUEST
    assert sql.INSERT_REQUEST.count("%s") == 6 and sql.INSERT_INBOX_DECIDED.count("%s") == 5
    assert "(uuid, cus_id, amount, memo, idempotency_key, request_hash, client_id)" in sql.INSERT_OWNED_REQUEST
    for statement in (sql.SELECT_REQUEST, sql.SELECT_REQUEST_BY_IDEMPOTENCY_KEY, sql.LOCK_INBOX,
                      sql.SELECT_STALE_PENDING, sql.SELECT_OWNED_REQUEST, sql.SELECT_REQUEST_BY_CLIENT_KEY,
                      sql.SELECT_REQUESTS_BY_CLIENT_KEYS, sql.owned_request_rows(2)):
        assert "memo" in statement, statement
    row = {{"uuid": "{uuid}", "cus_id": "alice", "amount": Decimal("1.50"), "memo": "rent", "succeed": None,
           "created_at": None, "finalized_at": None}}
    assert Payment.from_row(row).accepted_json()["memo"] == "rent"
    assert request_fingerprint(details) != request_fingerprint({{**details, "memo": "other"}})
    print("ok")
""")


def test_a_new_field_follows_from_one_declaration(tmp_path: Path) -> None:
    scratch = tmp_path / "services"
    shutil.copytree(PACKAGE, scratch / "chancepay", ignore=shutil.ignore_patterns("__pycache__"))
    source = scratch / "chancepay" / "core" / "payment.py"
    text = source.read_text()
    anchor = "\n)\nCOLUMNS: tuple[str, ...]"
    assert text.count(anchor) == 1, "FIELDS ends where the recipe says"
    text = text.replace(anchor, NEW_FIELD.rstrip("\n") + anchor, 1)
    field_class = "\n@dataclasses.dataclass(frozen=True)\nclass Field:"
    text = text.replace("\n" + field_class, PARSE_MEMO + field_class, 1)
    source.write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(scratch=str(scratch), uuid=UUID)],
        env={"PYTHONPATH": str(scratch), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
    # and the copy left alone is today's payment
    assert [f.wire for f in payment.FIELDS] == ["cusId", "amount"]
