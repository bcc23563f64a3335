"""The rules of single values (amount, cusId, uuid) and strict JSON parsing.

Pure functions, no I/O. core/payment.py declares which field uses which rule; the orchestrator
validates what clients send and the wallet what it consumes with the very same rules.
"""

from __future__ import annotations

import decimal
import json
import re
from decimal import Decimal
from typing import Any

import uuid6

from chancepay.core.errors import ChancePayError

CUS_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
AMOUNT_STR_RE = re.compile(r"[0-9]{1,16}(\.[0-9]{1,2})?")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
AMOUNT_LIMIT = Decimal(10) ** 16
CENT = Decimal("0.01")


class InvalidPayload(ChancePayError, ValueError):
    """The bytes are not the JSON document they must be."""


class InvalidField(ChancePayError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _reject_constant(name: str) -> Any:
    raise InvalidPayload(f"{name} is not a valid JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidPayload(f"duplicated key {key!r}")
        result[key] = value
    return result


def strict_json_loads(raw: bytes) -> Any:
    """Parse JSON the way money needs it: numbers stay exact Decimals, no NaN/Infinity,
    no duplicated keys (which parsers disagree on), UTF-8 only."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("body is not UTF-8") from None
    try:
        return json.loads(
            text,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicate_keys,
        )
    except InvalidPayload:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload(f"malformed JSON: {exc}") from None


def parse_amount(value: Any) -> Decimal:
    """A positive amount with at most two fraction digits, below 10^16, from a JSON string or
    an exact JSON number (already a Decimal, see strict_json_loads). Never a float."""
    if isinstance(value, bool) or not isinstance(value, (str, Decimal)):
        raise InvalidField("amount", 'must be a decimal string or number, e.g. "12.50"')
    if isinstance(value, str):
        if not AMOUNT_STR_RE.fullmatch(value):
            raise InvalidField("amount", "must look like 12 or 12.50 (digits, at most two fraction digits)")
        amount = Decimal(value)
    else:
        amount = value
        if not amount.is_finite():
            raise InvalidField("amount", "must be finite")
    if amount.copy_abs() >= AMOUNT_LIMIT:
        raise InvalidField("amount", "must be below 10^16")
    try:
        quantized = amount.quantize(CENT, context=decimal.Context(prec=40, traps=[decimal.InvalidOperation]))
    except decimal.InvalidOperation:
        raise InvalidField("amount", "is not a representable amount") from None
    if quantized != amount:
        raise InvalidField("amount", "has more than two fraction digits")
    if quantized <= 0:
        raise InvalidField("amount", "must be greater than zero")
    return quantized


def parse_cus_id(value: Any) -> str:
    if not isinstance(value, str) or not CUS_ID_RE.fullmatch(value):
        raise InvalidField("cusId", "must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


def parse_uuid(value: Any) -> str:
    """A canonical lowercase uuid (as ChancePay writes them)."""
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        raise InvalidField("uuid", "must be a canonical lowercase UUID")
    return value


def new_uuid() -> str:
    """A new payment's uuid: a UUIDv7 (RFC 9562), whose first 48 bits are the Unix time in
    milliseconds. Keys that grow with time append to the right edge of the `request` and `inbox`
    primary keys instead of landing on a random page of an index that outgrows the buffer pool
    (README "Performance": a cost that does not grow with history). Still 36 canonical characters:
    no schema change, and older uuids (v4) stay valid everywhere."""
    return str(uuid6.uuid7())


def format_amount(amount: Decimal) -> str:
    return f"{amount:.2f}"


def readable_uuid(body: bytes, message_id: Any = None) -> str | None:
    """For a message that is not valid as a whole: its uuid, if the body's "uuid" field or the
    message_id is one (so the corruption alert can be found by uuid). None otherwise."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    for candidate in (
        (doc.get("uuid") if isinstance(doc, dict) else None),
        message_id.decode("utf-8", "replace") if isinstance(message_id, bytes) else message_id,
    ):
        if isinstance(candidate, str) and UUID_RE.fullmatch(candidate):
            return candidate
    return None
