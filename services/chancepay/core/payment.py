"""What a payment is, in one place: its fields and their rules, its status, its message form,
its row form, and the JSON Schema of each field (the OpenAPI document is built from it).

Adding a field to a payment (README "Adding a field to a payment"):
1. declare it in FIELDS below: wire name, column, parser, JSON Schema;
2. add a migration (core/migrations.py) that adds its column to `request` and `inbox`;
3. the tests.
The API's request body, the message the scanner publishes and the wallet parses, the INSERTs and
SELECTs (core/sql.py builds their column lists from COLUMNS) and the OpenAPI document follow
from the declaration; tests/unit/test_payment.py proves it on a scratch copy.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from chancepay.core.codec import (
    AMOUNT_STR_RE,
    CUS_ID_RE,
    UUID_RE,
    InvalidField,
    InvalidPayload,
    format_amount,
    parse_amount,
    parse_cus_id,
    parse_uuid,
    strict_json_loads,
)


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


@dataclasses.dataclass(frozen=True)
class Field:
    """One thing a client says about a payment."""

    name: str  # the Python key and the column name in `request` and `inbox`
    wire: str  # the JSON key, in the API and in the message
    parse: Callable[[Any], Any]  # a JSON value -> the value; raises InvalidField(wire, ...)
    dump: Callable[[Any], Any]  # the value -> its JSON form (API answers and the message)
    from_column: Callable[[Any], Any]  # what the database driver returns -> the value
    schema: Mapping[str, Any]  # JSON Schema of what a client may send (OpenAPI)
    column_type: str  # the column's SQL type, for the migration that adds it
    description: str = ""
    answer_schema: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"type": "string"})  # dumped


FIELDS: tuple[Field, ...] = (
    Field(
        "cus_id", "cusId", parse_cus_id, str, str,
        {"type": "string", "pattern": _anchored(CUS_ID_RE.pattern)},
        "VARCHAR(64) CHARACTER SET ascii NOT NULL",
        "The paying customer: 1-64 characters of A-Z a-z 0-9 _ . : -",
    ),
    Field(
        "amount", "amount", parse_amount, format_amount, Decimal,
        {"oneOf": [
            # greater than zero: the pattern, and not all zeros ("0", "00.00")
            {"type": "string", "pattern": _anchored(AMOUNT_STR_RE.pattern), "not": {"pattern": "^0+(\\.0+)?$"}},
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e16, "multipleOf": 0.01},
        ]},
        "DECIMAL(18,2) NOT NULL",
        "Exact decimal > 0, at most two fraction digits, below 10^16",
    ),
)
COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS)
WIRE_NAMES: frozenset[str] = frozenset(f.wire for f in FIELDS)
UUID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _anchored(UUID_RE.pattern)}

Details = Mapping[str, Any]  # field name -> parsed value, for every field in FIELDS


class Status(enum.Enum):
    """The three-state result: PENDING until the wallet's result is stored, then final."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @classmethod
    def of(cls, succeed: bool | None) -> Status:
        return cls.PENDING if succeed is None else cls.SUCCEEDED if succeed else cls.FAILED


class MissingFields(InvalidField):
    def __init__(self, names: list[str]) -> None:
        super().__init__("*", f"missing field(s): {', '.join(names)}")
        self.names = names


class UnknownFields(InvalidField):
    def __init__(self, names: list[str]) -> None:
        super().__init__("*", f"unknown field(s): {', '.join(names)}")
        self.names = names


def parse_details(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A client's JSON object -> details. Missing keys, then unknown keys, then each field's own
    rule; raises MissingFields, UnknownFields or the field's InvalidField."""
    missing = WIRE_NAMES - doc.keys()
    if missing:
        raise MissingFields(sorted(missing))
    unknown = doc.keys() - WIRE_NAMES
    if unknown:
        raise UnknownFields(sorted(unknown))
    return {f.name: f.parse(doc[f.wire]) for f in FIELDS}


def dump_details(details: Details) -> dict[str, Any]:
    return {f.wire: f.dump(details[f.name]) for f in FIELDS}


def details_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The declared fields of a row read by column name (see core/db.py fetchrow)."""
    return {f.name: f.from_column(row[f.name]) for f in FIELDS}


def column_values(details: Details) -> tuple[Any, ...]:
    """The details in COLUMNS order, for the statements core/sql.py builds from COLUMNS."""
    return tuple(details[name] for name in COLUMNS)


# --------------------------------------------------------------------------- the message
@dataclasses.dataclass(frozen=True)
class PaymentMessage:
    """What the scanner publishes and the wallet consumes: {"uuid": ..., <every field>}."""

    uuid: str
    details: Details

    def encode(self) -> bytes:
        return json.dumps({"uuid": self.uuid, **dump_details(self.details)}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> PaymentMessage:
        """The wallet's parser: anything but exactly {uuid, <fields>}, each valid, is corrupt."""
        doc = strict_json_loads(body)
        if not isinstance(doc, dict):
            raise InvalidPayload("message is not a JSON object")
        expected = WIRE_NAMES | {"uuid"}
        if set(doc) != expected:
            raise InvalidPayload(f"message fields are {sorted(doc)}, expected {', '.join(sorted(expected))}")
        try:
            return cls(parse_uuid(doc["uuid"]), {f.name: f.parse(doc[f.wire]) for f in FIELDS})
        except InvalidField as exc:
            raise InvalidPayload(str(exc)) from None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PaymentMessage:
        return cls(str(row["uuid"]), details_from_row(row))


# --------------------------------------------------------------------------- the stored payment
@dataclasses.dataclass(frozen=True)
class Payment:
    uuid: str
    details: Details
    succeed: bool | None
    created_at: dt.datetime | None  # None only in the 202 answer, which does not show it
    finalized_at: dt.datetime | None

    @property
    def status(self) -> Status:
        return Status.of(self.succeed)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Payment:
        """A `request` row read by column name (core/sql.py SELECT_REQUEST)."""
        succeed = row["succeed"]
        return cls(str(row["uuid"]), details_from_row(row), None if succeed is None else bool(succeed),
                   row["created_at"], row["finalized_at"])

    def message(self) -> PaymentMessage:
        return PaymentMessage(self.uuid, self.details)

    def accepted_json(self) -> dict[str, Any]:
        """The 202 answer to POST /payments."""
        return {"uuid": self.uuid, **dump_details(self.details), "status": self.status.value}

    def as_json(self) -> dict[str, Any]:
        """GET /payments/{uuid}."""
        return {
            **self.accepted_json(),
            "createdAt": _iso(self.created_at) if self.created_at else None,
            "finalizedAt": _iso(self.finalized_at) if self.finalized_at else None,
        }


def _iso(value: dt.datetime) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- JSON Schemas
def request_schema() -> dict[str, Any]:
    """POST /payments' body."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.wire for f in FIELDS],
        "properties": {f.wire: {**f.schema, **({"description": f.description} if f.description else {})}
                       for f in FIELDS},
    }


def _answer_properties() -> dict[str, Any]:
    return {
        "uuid": {"type": "string", "format": "uuid"},
        **{f.wire: dict(f.answer_schema) for f in FIELDS},
        "status": {"type": "string", "enum": [s.value for s in Status]},
    }


def accepted_schema() -> dict[str, Any]:
    """The 202 answer."""
    return {"type": "object", "required": ["uuid", *(f.wire for f in FIELDS), "status"],
            "properties": _answer_properties()}


def payment_schema() -> dict[str, Any]:
    """GET /payments/{uuid}."""
    return {
        "type": "object",
        "required": ["uuid", *(f.wire for f in FIELDS), "status", "createdAt", "finalizedAt"],
        "properties": {
            **_answer_properties(),
            "createdAt": {"type": "string", "format": "date-time"},
            "finalizedAt": {"type": ["string", "null"], "format": "date-time"},
        },
    }
