"""The scanner's decisions, as pure functions (no I/O): what a failed publish was, whether it
uses up an attempt, and when the row is tried again."""

from __future__ import annotations

import asyncio
import dataclasses

import aiormq.exceptions
from pamqp import commands as spec

from chancepay.core.backoff import capped_exponential


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    uuid: str
    payload: bytes
    attempts: int


@dataclasses.dataclass(frozen=True)
class Failure:
    row: OutboxRow
    reason: str  # nack | returned | timeout | connection
    detail: str


def classify_publish_error(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.PublishError):
        return "returned"
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return "nack"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return "connection"


def sort_results(rows: list[OutboxRow], results: list[object]) -> tuple[list[str], list[Failure]]:
    """Each claimed row's publish outcome -> (uuids the broker acked, failures). Only a
    Basic.Ack is an ack; an exception is classified; anything else is a returned message
    (what a publish resolves to when returns do not raise)."""
    acked: list[str] = []
    failures: list[Failure] = []
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, BaseException):
            failures.append(Failure(row, classify_publish_error(result), repr(result)[:300]))
        elif isinstance(result, spec.Basic.Ack):
            acked.append(row.uuid)
        else:
            failures.append(Failure(row, "returned", repr(result)[:300]))
    return acked, failures


def counts_as_attempt(reason: str) -> bool:
    """Whether a failed publish uses up one of CHANCEPAY_SCANNER_MAX_ATTEMPTS. A confirm timeout
    does not: the broker is slow or blocking publishers (a memory or disk alarm) and the message
    may well have been stored; a long alarm must not exhaust rows that will go through once it
    clears. A nack, a return (unroutable) or a lost connection do count."""
    return reason != "timeout"


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Back-off after the n-th failed attempt (n >= 1): base * 2^(n-1), capped."""
    return capped_exponential(attempts, base, cap)


def next_idle_sleep(
    current: float, claimed: int, batch_size: int, base: float, cap: float, *, nudged: bool = False
) -> float:
    """The sleep before the next poll, after one that claimed `claimed` rows and slept `current`
    before it. A full batch: no sleep (more is due). Otherwise adaptive: an empty poll doubles the
    sleep up to `cap`, a poll that found rows halves it down to `base`; so at low rates the scanner
    polls about as often as payments arrive instead of every `base` seconds (the idle burn), and
    under load it stays at `base`. cap <= base: always `base` (a fixed interval). A poll started by
    a nudge that did not fill a batch: `cap` (the next rows bring their own nudge; the poll is only
    the safety net)."""
    if claimed >= batch_size:
        return 0.0
    if nudged:
        return max(cap, base)
    if cap <= base:
        return base
    current = min(max(current, base), cap)
    return min(cap, current * 2) if claimed == 0 else max(base, current / 2)


# The hold after a nudged claim that found rows: the poll interval the scanner claimed at under
# load before it was nudged (CHANCEPAY_SCANNER_POLL_INTERVAL_SECONDS' default).
NUDGED_HOLD_SECONDS = 0.02


def hold_after(claimed: int, batch_size: int, *, nudged: bool, hold: float = NUDGED_HOLD_SECONDS) -> float:
    """A pause no nudge shortens, after a poll started by a nudge that found rows but not a full
    batch: under load the orchestrator commits (and nudges) every few milliseconds, and a claim
    per nudge would take the outbox's locks (FOR UPDATE SKIP LOCKED, the lease UPDATE) several
    times as often as the 20 ms poll did, in the way of the API's inserts. Nudges that come
    meanwhile are kept: the next claim follows the pause at once. So under load the scanner claims
    about as often as it polled before, and at low rates a payment is claimed when it is nudged."""
    return hold if nudged and 0 < claimed < batch_size else 0.0
