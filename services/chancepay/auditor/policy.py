"""The online audit's policy, pure: where a pass reads from next, what it carries to the next pass,
and what the gauges say.

A pass checks (auditor/auditor.py gathers them):
- the request rows and the inbox rows created since each side's checkpoint (each database's own
  clock), in created_at order, at most a batch per side;
- the payments it saw pending before (the *watch*): re-read by uuid until final, so a payment
  finalized after its creation was read is checked once final ("finalized since the checkpoint");
- the payments found violating before: re-read by uuid every pass, so a violation that heals (a
  late mirror, a row put back) leaves the gauge and one that does not stays counted;
- the requests still pending and the outbox rows not yet tried past the grace age (the lost and
  unexplained kinds), each an indexed read bounded by a batch.
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
from decimal import Decimal

from chancepay.core.invariants import VIOLATION_KINDS, InvariantReport

# A transaction may commit a little after its row's created_at: a caught-up side's next read starts
# this long before the end of the last one (rows read twice are checked twice, harmlessly).
SETTLE = dt.timedelta(seconds=5)
# A new process starts this far back (the offline `chancepay audit`'s window).
START_LOOKBACK = dt.timedelta(hours=24)
ONE_TICK = dt.timedelta(microseconds=1)


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


def start(now: dt.datetime) -> dt.datetime:
    """A new process's checkpoint."""
    return now - START_LOOKBACK


def next_since(
    since: dt.datetime, upto: dt.datetime, read: int, limit: int, last_created: dt.datetime | None
) -> dt.datetime:
    """A side's checkpoint after reading `read` rows (at most `limit`, the last created at
    `last_created`) of the window [since, upto]: a full batch goes on from its last row (rows at that
    very instant are read again; a batch all of one instant steps past it), a caught-up side from
    SETTLE before `upto`."""
    if read >= limit and last_created is not None:
        return last_created if last_created > since else since + ONE_TICK
    return max(since, upto - SETTLE)


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
