"""The online audit's policy, pure: where a pass reads from next, what it carries to the next pass,
and what the gauges say.

A pass checks (auditor/auditor.py gathers them):
- the request rows and the inbox rows not yet judged, created since each side's checkpoint less an
  overlap for late commits (each database's own clock; `Checkpoint`), paged in (created_at, uuid)
  order by the covering index on created_at, at most a batch of new ones per side;
- the payments it saw pending before (the *watch*): re-read by uuid until final, so a payment
  finalized after its creation was read is checked once final ("finalized since the checkpoint");
- the payments found violating before: re-read by uuid every pass, so a violation that heals (a
  late mirror, a row put back) leaves the gauge and one that does not stays counted;
- the requests still pending and the outbox rows not yet tried past the grace age (the lost and
  unexplained kinds), each read bounded by a batch (the outbox rows of those requests and of the
  unexplained ones known before are read by uuid, so the bound never makes a request look lost).
Every instant compared is the server's own (created_at against NOW(6) or against another
created_at, on the session time zone the writers use too); the auditor's host clock never is.
Nothing of this grows with the tables' history, only with the traffic since the last pass, the
payments in flight and the violations: a pass's cost is flat with history.

`chancepay_audit_violations{kind}` is the number of uuids currently known to violate that kind:
re-checked each pass, so it falls back to 0 when the violation heals and stays while it does not
(for as long as the process runs; a restart re-reads START_LOOKBACK of history).
`chancepay_audit_unbalanced_amount` is Σ amount of SUCCEEDED requests − Σ amount of succeeded inbox
rows over every audited payment: each payment in balance adds 0 (a pending request adds 0: it may
still be mirrored), so it is the sum over the known unbalanced ones, kept like the violations.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from chancepay.core.invariants import VIOLATION_KINDS, InvariantReport

# A new process starts this far back (the offline `chancepay audit`'s window).
START_LOOKBACK = dt.timedelta(hours=24)
# A row's created_at is its INSERT's start, not its commit: a transaction may commit after rows
# created later are read (a lock wait up to @@innodb_lock_wait_timeout, an fsync stall). Each pass
# re-reads this overlap behind the newest row judged: the server's innodb_lock_wait_timeout (read at
# start) plus this margin. A row committing later than that behind the newest row is not audited.
OVERLAP_MARGIN = dt.timedelta(seconds=30)


def overlap(lock_wait_timeout_seconds: float) -> dt.timedelta:
    """How far behind the newest row judged a side re-reads, from its server's lock wait timeout."""
    return dt.timedelta(seconds=lock_wait_timeout_seconds) + OVERLAP_MARGIN


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One side's read position, on its database's clock: the newest created_at judged (`high`) and
    the uuids judged inside the overlap behind it. A pass pages (created_at, uuid) from `low()` on,
    skips the judged uuids and takes at most a batch of the others, so rows sharing one instant are
    never skipped, a late commit inside the overlap is still read, each row is judged once and a pass
    always makes progress (judged rows do not count against the batch)."""

    high: dt.datetime
    span: dt.timedelta
    judged: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)

    def low(self) -> dt.datetime:
        return self.high - self.span

    def unjudged(self, page: Sequence[tuple[str, dt.datetime]]) -> list[tuple[str, dt.datetime]]:
        return [(uuid, created) for uuid, created in page if uuid not in self.judged]

    def advanced(self, taken: Sequence[tuple[str, dt.datetime]]) -> Checkpoint:
        """After the pass judged `taken`: the newest created_at moves on, the judged uuids that fell
        out of the overlap are forgotten (memory bounded by the traffic of one overlap)."""
        high = max([self.high, *(created for _, created in taken)])
        low = high - self.span
        judged = {u: c for u, c in [*self.judged.items(), *taken] if c >= low}
        return Checkpoint(high, self.span, judged)


def start(now: dt.datetime, span: dt.timedelta) -> Checkpoint:
    """A new process's checkpoint: START_LOOKBACK back (and the overlap before that)."""
    return Checkpoint(now - START_LOOKBACK, span)


@dataclasses.dataclass(frozen=True)
class Row:
    """One side's row of a payment, as the audit reads it."""

    succeed: bool | None
    amount: Decimal


@dataclasses.dataclass(frozen=True)
class Finding:
    """What is wrong with one payment: a violation kind, or only an amount out of balance."""

    kind: str | None
    unbalanced: Decimal = Decimal(0)


def unbalanced(request: Row | None, inbox: Row | None) -> Decimal:
    """Σ succeeded request amount − Σ succeeded inbox amount for one payment; 0 while the request
    is pending (it may still be mirrored)."""
    if request is not None and request.succeed is None:
        return Decimal(0)
    paid = request.amount if request is not None and request.succeed else Decimal(0)
    deducted = inbox.amount if inbox is not None and inbox.succeed else Decimal(0)
    return paid - deducted


def findings(
    report: InvariantReport, requests: dict[str, Row], inbox: dict[str, Row], checked: set[str]
) -> dict[str, Finding]:
    """Every checked payment that violates an invariant or is out of balance."""
    kinds = {uuid: kind for kind in VIOLATION_KINDS for uuid in getattr(report, kind)}
    found: dict[str, Finding] = {}
    for uuid in checked:
        amount = unbalanced(requests.get(uuid), inbox.get(uuid))
        if uuid in kinds or amount:
            found[uuid] = Finding(kinds.get(uuid), amount)
    return found


def watch(requests: dict[str, Row]) -> set[str]:
    """The payments to read again next pass because they are not final yet."""
    return {uuid for uuid, row in requests.items() if row.succeed is None}


def gauges(found: dict[str, Finding]) -> tuple[dict[str, int], Decimal]:
    """chancepay_audit_violations per kind (every kind present, 0 included) and the unbalanced amount."""
    counts = dict.fromkeys(VIOLATION_KINDS, 0)
    for finding in found.values():
        if finding.kind is not None:
            counts[finding.kind] += 1
    return counts, sum((f.unbalanced for f in found.values()), Decimal(0))


def newly(before: dict[str, Finding], now: dict[str, Finding]) -> dict[str, Finding]:
    """What to log: findings not known before (or changed), so a lasting violation is logged once."""
    return {uuid: f for uuid, f in now.items() if before.get(uuid) != f}
