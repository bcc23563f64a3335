"""Pure validation and wire-format rules (no I/O)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chancepay.core.codec import (
    InvalidField,
    InvalidPayload,
    parse_amount,
    parse_cus_id,
    parse_uuid,
    strict_json_loads,
)
from chancepay.core.payment import PaymentMessage

UUID = "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6b"


@pytest.mark.parametrize(
    "value,expected",
    [
        ("12.50", "12.50"),
        ("12.5", "12.50"),
        ("1", "1.00"),
        (Decimal("0.01"), "0.01"),
        (Decimal("12.500"), "12.50"),
        (Decimal("1E+2"), "100.00"),
        ("9999999999999999.99", "9999999999999999.99"),
    ],
)
def test_valid_amounts(value, expected) -> None:
    assert f"{parse_amount(value):.2f}" == expected


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "0.00",
        "-1",
        Decimal("-0.01"),
        Decimal(0),
        "1.234",
        Decimal("1.234"),
        "1e3",
        " 1",
        "1 ",
        "1,00",
        "",
        "10000000000000000",
        Decimal("1E+400"),
        Decimal("NaN"),
        Decimal("Infinity"),
        True,
        False,
        None,
        1.5,
        12,
        [],
        {},
        "٣",  # Arabic-Indic digit: str.isdigit() would accept it, the regex must not
    ],
)
def test_invalid_amounts(value) -> None:
    with pytest.raises(InvalidField) as err:
        parse_amount(value)
    assert err.value.field == "amount"


def test_amount_never_goes_through_float() -> None:
    doc = strict_json_loads(b'{"a": 0.1, "b": 12345678901234567.99, "c": 3}')
    assert doc == {"a": Decimal("0.1"), "b": Decimal("12345678901234567.99"), "c": Decimal(3)}


@pytest.mark.parametrize("raw", [b'{"a":1,"a":2}', b"NaN", b'{"a":Infinity}', b'{"a":-Infinity}', b"\xff", b"{", b""])
def test_strict_json_rejects(raw) -> None:
    with pytest.raises(InvalidPayload):
        strict_json_loads(raw)


def test_huge_integer_is_a_decimal_not_an_error() -> None:
    assert strict_json_loads(b"9" * 5000) == Decimal("9" * 5000)


@pytest.mark.parametrize("value", ["a", "A-z_0.9:x", "x" * 64])
def test_valid_cus_id(value) -> None:
    assert parse_cus_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a\n", "a\x00", "é", "a\u202eb", "a;", 5, None])
def test_invalid_cus_id(value) -> None:
    with pytest.raises(InvalidField):
        parse_cus_id(value)


def test_uuid_must_be_canonical_lowercase() -> None:
    assert parse_uuid(UUID) == UUID
    for bad in (UUID.upper(), UUID.replace("-", ""), UUID + "\n", "{" + UUID + "}", 7):
        with pytest.raises(InvalidField):
            parse_uuid(bad)


def test_message_round_trip() -> None:
    msg = PaymentMessage(UUID, {"cus_id": "alice", "amount": Decimal("12.50")})
    assert msg.encode() == b'{"uuid":"' + UUID.encode() + b'","cusId":"alice","amount":"12.50"}'
    assert PaymentMessage.decode(msg.encode()) == msg


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"uuid":"%s","cusId":"a"}' % UUID.encode(),
        b'{"uuid":"%s","cusId":"a","amount":"1","extra":1}' % UUID.encode(),
        b'{"uuid":"nope","cusId":"a","amount":"1"}',
        b'{"uuid":"%s","cusId":"a","amount":"-1"}' % UUID.encode(),
        b'{"uuid":"%s","uuid":"%s","cusId":"a","amount":"1"}' % (UUID.encode(), UUID.encode()),
    ],
)
def test_corrupt_messages(body) -> None:
    with pytest.raises(InvalidPayload):
        PaymentMessage.decode(body)
