"""Operator commands: `chancepay outbox`, `chancepay dlq`, `chancepay trace` (CONTRACT "Processes").

Inspect and repair without SQL. Every command prints JSON on stdout (one object, or one per line
for lists), logs what it did on stderr (JSON lines, like every role), counts it in
chancepay_operator_actions_total{action} (pushed to CHANCEPAY_PUSHGATEWAY_URL when set, as the
reconciler does), and is idempotent: running it twice changes nothing the first run did not.

- outbox list [--all]       rows at the attempt limit (exhausted) or every row
- outbox retry UUID...|--all-exhausted [--dry-run]
                            exhausted rows back into rotation: attempts 0, due now; exit 1 when
                            a uuid has no outbox row
- dlq list                  dead-lettered messages, each with why it is there (signature, parse)
                            and its uuid if readable. They are rows of the wallet's dead_letter
                            table (the wallet moves every DLQ message there, core/deadletters.py):
                            looking is a SELECT and never a broker delivery
- dlq show ID               one message in full (ID: the message id, i.e. the uuid, or #position)
- dlq replay ID...|--all [--dry-run]
                            back through the normal path: a message whose uuid is a pending
                            payment goes back into the OUTBOX from the request row (the scanner
                            signs it again; the inbox deduplicates); then its row is deleted.
                            A message with no such payment is left where it is and reported.
- dlq purge ID...|--all [--dry-run]
                            delete dead letters
- trace UUID                one payment's whole story: request, outbox, inbox, parked
                            callback, DLQ, and the operator actions that named it

The three that change state (retry, replay, purge) leave one row each in the operator trail
(core/trail.py), written after the action with its result. With --dry-run they print, one JSON
line each, exactly the rows the real run would act on at that moment (the same selection), then
the summary the real run would print (with "dry_run": true), and exit as the real run would; they
change nothing, the trail included (a dry run is a read, like `list`).
"""

from __future__ import annotations

import base64
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import push_to_gateway

from chancepay.core import signing, sql, topology, trail
from chancepay.core.broker import close_quietly, connect_any
from chancepay.core.codec import InvalidPayload, parse_uuid
from chancepay.core.config import Settings
from chancepay.core.db import Database
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Payment, PaymentMessage, dump_details, succeed_from_column

OPS_TAG = "[FAILED TO OPERATE]"
# What `dlq replay` does with a dead letter: its summary's keys, the trail's outcome for its uuid,
# and what --dry-run says it would do.
REPLAYED, ALREADY_FINAL, NOT_A_PAYMENT = "replayed", "already_final", "not_a_payment"
WOULD = {REPLAYED: "replay", ALREADY_FINAL: "remove", NOT_A_PAYMENT: "keep"}
WHY = {
    REPLAYED: "a pending payment: back into the outbox from its request row, then the dead letter deleted",
    ALREADY_FINAL: "the payment is already final: the dead letter deleted",
    NOT_A_PAYMENT: "no payment with this uuid: left in the DLQ (the exit is then 1)",
}


@dataclasses.dataclass(frozen=True)
class Step:
    """One dead letter a replay selected, and what it does with it."""

    row: dict[str, Any]
    position: int
    decision: str
    payment: Payment | None

    def key(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "id": self.row["id"],
            "uuid": self.row["uuid"],
            "message_id": self.row["message_id"],
        }


def _out(obj: Any) -> None:
    # Database times are UTC without a zone: say so (…Z), like the API does.
    sys.stdout.write(orjson.dumps(obj, default=str, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode() + "\n")


class Ops:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger()
        self.metrics = Metrics("operator")
        self._orch: Database | None = None
        self._wallet: Database | None = None

    @property
    def orch(self) -> Database:
        if self._orch is None:
            self._orch = Database(self.settings.orchestrator_db_url, pool_size=2, timeout=self.settings.db_timeout)
        return self._orch

    @property
    def wallet(self) -> Database:
        if self._wallet is None:
            self._wallet = Database(self.settings.wallet_db_url, pool_size=2, timeout=self.settings.db_timeout)
        return self._wallet

    def count(self, action: str, n: int = 1) -> None:
        self.metrics.operator_actions.labels(action=action).inc(n)

    async def close(self) -> None:
        for db in (self._orch, self._wallet):
            if db is not None:
                await db.close()
        if self.settings.pushgateway_url:
            try:
                push_to_gateway(
                    self.settings.pushgateway_url, job="chancepay-operator", registry=self.metrics.registry, timeout=5
                )
            except Exception as exc:
                self.log.error("[FAILED TO PUSH METRICS]", error=repr(exc))

    # ------------------------------------------------------------------ outbox
    async def outbox_list(self, all_rows: bool) -> int:
        statement = sql.LIST_OUTBOX if all_rows else sql.LIST_OUTBOX_EXHAUSTED
        rows = await self.orch.fetchall(statement, (self.settings.scanner_max_attempts,) if not all_rows else None)
        for uuid, attempts, age_us, next_in_us, last_error in rows:
            _out(
                {
                    "uuid": uuid,
                    "attempts": attempts,
                    "exhausted": attempts >= self.settings.scanner_max_attempts,
                    "age_seconds": round(int(age_us) / 1e6, 3),
                    "next_attempt_in_seconds": round(int(next_in_us) / 1e6, 3),
                    "last_error": last_error,
                }
            )
        self.count("outbox_list")
        return 0

    async def outbox_retry(self, uuids: list[str], all_exhausted: bool, dry_run: bool = False) -> int:
        for u in uuids:
            parse_uuid(u)  # bad input: refused before anything is read, changed or recorded
        if dry_run:
            rows = await self.orch.fetchrows(*self._exhausted(uuids, all_exhausted, lock=False))
            for row in rows:
                _out({"dry_run": True, "would": "retry", **row})
            code, summary = await self._retry_summary(uuids, [row["uuid"] for row in rows], None)
            _out({**summary, "dry_run": True})
            return code
        action = trail.Action("outbox retry", {"uuids": uuids, "all_exhausted": all_exhausted})
        return await self._act(action, lambda: self._retry(uuids, all_exhausted, action))

    def _exhausted(self, uuids: list[str], all_exhausted: bool, *, lock: bool) -> tuple[str, tuple[Any, ...]]:
        """The statement selecting what a retry acts on: the exhausted rows among `uuids`, or all."""
        limit = self.settings.scanner_max_attempts
        if all_exhausted:
            return (sql.LOCK_ALL_EXHAUSTED_OUTBOX if lock else sql.ALL_EXHAUSTED_OUTBOX), (limit,)
        among = sql.LOCK_EXHAUSTED_OUTBOX_AMONG if lock else sql.EXHAUSTED_OUTBOX_AMONG
        return sql.among(among, len(uuids)), (limit, *uuids)

    async def _retry(self, uuids: list[str], all_exhausted: bool, action: trail.Action) -> tuple[int, dict[str, Any]]:
        async def work(cur: Any) -> list[str]:
            await cur.execute(*self._exhausted(uuids, all_exhausted, lock=True))
            chosen = [row[0] for row in await cur.fetchall()]
            if chosen:  # exactly the locked rows: the trail names what was reset
                limit = self.settings.scanner_max_attempts
                await cur.execute(sql.among(sql.RETRY_EXHAUSTED_OUTBOX, len(chosen)), (limit, *chosen))
            return chosen

        retried = await self.orch.run(work)
        for u in retried:
            action.touch(u, "retried")
        self.log.info("outbox rows back into rotation", rows=len(retried), uuids=uuids or "all exhausted")
        self.count("outbox_retry", len(retried))
        return await self._retry_summary(uuids, retried, action)

    async def _retry_summary(
        self, uuids: list[str], retried: list[str], action: trail.Action | None
    ) -> tuple[int, dict[str, Any]]:
        # A uuid with no outbox row at all (never created, or long since published) could not be
        # retried: said, and the exit is 1. A row already in rotation is fine (idempotent).
        unknown: list[str] = []
        if uuids:
            present = {u for (u,) in await self.orch.fetchall(sql.among(sql.OUTBOX_AMONG, len(uuids)), uuids)}
            unknown = [u for u in uuids if u not in present]
        if action is not None:
            for u in uuids:
                action.touch(u, "not_in_outbox" if u in unknown else "not_exhausted")
        if unknown:
            self.log.error(OPS_TAG, action="outbox retry", error="no outbox row with this uuid", uuids=unknown)
            return 1, {"retried": len(retried), "not_in_outbox": unknown}
        return 0, {"retried": len(retried)}

    # ------------------------------------------------------------------ trail
    async def _act(self, action: trail.Action, work: Callable[[], Awaitable[tuple[int, dict[str, Any]]]]) -> int:
        """Run a state-changing command's `work` (which fills `action` in as it acts, and returns its
        exit code and summary), print the summary, then append the trail row (core/trail.py). The
        trail's tables are checked first: when they are missing, nothing is done."""
        await trail.require(self.orch)
        who = trail.operator(self.settings.operator)
        try:
            code, summary = await work()
        except Exception as exc:
            action.fail(exc)
            await trail.record_or_log(self.orch, action, who, self.log)
            raise
        action.finish(code, summary)
        _out(summary)
        recorded = await trail.record_or_log(self.orch, action, who, self.log)
        return code if recorded else 1

    # ------------------------------------------------------------------ DLQ
    # The dead letters are rows of the wallet's `dead_letter` table (core/deadletters.py): the
    # wallet moves every message of chancepay.payments.dlq there. Looking is a SELECT; replay and
    # purge delete the rows they act on. Nothing here receives a message from the broker.
    async def queued_dead_letters(self) -> int | None:
        """Messages still in the DLQ queue, not yet moved by the wallet (a passive declare: reads a
        count, delivers nothing). None when the broker does not answer."""

        async def depth(channel: Any) -> int:
            return int((await channel.queue_declare(topology.DLQ, passive=True)).message_count)

        try:
            connection = await connect_any(self.settings.amqp_url_list)
        except Exception:
            return None
        try:
            return await depth(await connection.channel())
        except Exception:
            return None
        finally:
            await close_quietly(connection)

    async def _note_queued(self) -> None:
        queued = await self.queued_dead_letters()
        if queued:
            self.log.warning(
                "dead letters not yet moved into the wallet's dead_letter table (the wallet moves "
                "them within seconds; is a wallet running?)",
                queue=topology.DLQ,
                messages=queued,
            )

    async def _rows(self, limit: int) -> list[dict[str, Any]]:
        return await self.wallet.fetchrows(sql.LIST_DEAD_LETTERS, (limit,))

    def describe(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        body = bytes(row["body"])
        headers = orjson.loads(row["headers"])
        unsigned = signing.verify(body, headers, self.settings.message_keys)
        try:
            PaymentMessage.decode(body)
            parse_error = None
        except InvalidPayload as exc:
            parse_error = str(exc)
        death = {
            k: v
            for k, v in (
                ("reason", row["reason"]),
                ("queue", row["source_queue"]),
                ("count", row["death_count"]),
                ("time", row["dead_lettered_at"]),
            )
            if v is not None
        }
        return {
            "position": position,
            "id": row["id"],
            "message_id": row["message_id"],
            "uuid": row["uuid"],
            "signature": "ok" if unsigned is None else unsigned,
            "parse": "ok" if parse_error is None else parse_error,
            "dead_lettered": death or None,
            "delivery_count": row["delivery_count"],
            "stored_at": row["stored_at"],
            "body_bytes": len(body),
            "body_preview": body[:256].decode("utf-8", "replace"),
        }

    @staticmethod
    def _matches(row: dict[str, Any], position: int, ident: str) -> bool:
        if ident.startswith("#"):
            return ident[1:].isdigit() and int(ident[1:]) == position
        return ident in (row["message_id"], row["uuid"])

    async def dlq_list(self, limit: int) -> int:
        for i, row in enumerate(await self._rows(limit), start=1):
            _out(self.describe(row, i))
        await self._note_queued()
        self.count("dlq_list")
        return 0

    async def dlq_show(self, ident: str, limit: int) -> int:
        found: list[dict[str, Any]] = []
        for i, row in enumerate(await self._rows(limit), start=1):
            if self._matches(row, i, ident):
                d = self.describe(row, i)
                d["body_base64"] = base64.b64encode(bytes(row["body"])).decode()
                d["headers"] = {k: v for k, v in orjson.loads(row["headers"]).items() if k != "x-death"}
                found.append(d)
        self.count("dlq_show")
        if not found:
            await self._note_queued()
            _out({"error": f"no DLQ message {ident}"})
            return 1
        for d in found:
            _out(d)
        return 0

    async def _replay_plan(self, idents: list[str], replay_all: bool, limit: int) -> tuple[list[Step], list[str]]:
        """What a replay acts on, and how (the real run and its --dry-run alike): each dead letter it
        selects with its decision, and the ids that named no dead letter."""
        plan: list[Step] = []
        matched: set[str] = set()
        for i, row in enumerate(await self._rows(limit), start=1):
            hits = [ident for ident in idents if self._matches(row, i, ident)]
            matched.update(hits)
            if not replay_all and not hits:
                continue
            uuid = row["uuid"]
            request = await self.orch.fetchrow(sql.SELECT_REQUEST, (uuid,)) if uuid else None
            payment = None if request is None else Payment.from_row(request)
            if payment is None:
                decision = NOT_A_PAYMENT
            else:
                decision = REPLAYED if payment.succeed is None else ALREADY_FINAL
            plan.append(Step(row, i, decision, payment))
        return plan, [ident for ident in idents if ident not in matched]

    async def dlq_replay(self, idents: list[str], replay_all: bool, limit: int, dry_run: bool = False) -> int:
        if dry_run:
            plan, unknown = await self._replay_plan(idents, replay_all, limit)
            for step in plan:
                _out({"dry_run": True, "would": WOULD[step.decision], **step.key(), "why": WHY[step.decision]})
            code, summary = self._replay_summary([s.decision for s in plan], unknown)
            _out({**summary, "dry_run": True})
            return code
        action = trail.Action("dlq replay", {"ids": idents, "all": replay_all, "limit": limit})

        async def replay() -> tuple[int, dict[str, Any]]:
            plan, unknown = await self._replay_plan(idents, replay_all, limit)
            for step in plan:
                await self._replay_one(step)
                action.touch(step.row["uuid"], step.decision)
            self.count("dlq_replay", sum(step.decision == REPLAYED for step in plan))
            return self._replay_summary([s.decision for s in plan], unknown)

        return await self._act(action, replay)

    async def _replay_one(self, step: Step) -> None:
        row, uuid = step.row, step.row["uuid"]
        if step.decision == NOT_A_PAYMENT:
            self.log.error(
                OPS_TAG,
                action="dlq replay",
                uuid=uuid,
                message_id=row["message_id"],
                reason="no payment with this uuid: left in the DLQ (see `chancepay dlq show`)",
            )
            return
        if step.decision == ALREADY_FINAL:
            await self.wallet.execute(sql.DELETE_DEAD_LETTER, (row["id"],))
            assert step.payment is not None
            self.log.info(
                "dlq replay: payment already final; DLQ copy removed", uuid=uuid, succeed=step.payment.succeed
            )
            return
        # The outbox row is committed before the dead letter is deleted: a crash in between
        # leaves both, and a second replay is harmless (INSERT IGNORE; the inbox deduplicates).
        assert step.payment is not None
        await self.orch.execute(sql.REENQUEUE_OUTBOX, (uuid, step.payment.message().encode()))
        await self.wallet.execute(sql.DELETE_DEAD_LETTER, (row["id"],))
        self.log.warning("dlq replay: payment put back into the outbox from its request row", uuid=uuid)

    def _replay_summary(self, decisions: list[str], unknown: list[str]) -> tuple[int, dict[str, Any]]:
        summary: dict[str, Any] = {d: decisions.count(d) for d in (REPLAYED, ALREADY_FINAL, NOT_A_PAYMENT)}
        if unknown:
            summary["not_in_dlq"] = unknown
            self.log.error(OPS_TAG, action="dlq replay", reason="no dead letter with this id", idents=unknown)
        # The contract: non-zero when it could not do what was asked (nothing to replay, a message
        # that is no payment, an id that names nothing).
        done = summary[REPLAYED] + summary[ALREADY_FINAL]
        return (0 if done and not summary[NOT_A_PAYMENT] and not unknown else 1), summary

    async def _purge_selection(self, idents: list[str], purge_all: bool, limit: int) -> tuple[list[Any], list[str]]:
        """What a purge acts on (the real run and its --dry-run alike): (id, uuid, message_id,
        position) of each dead letter it deletes, and the ids that named no dead letter."""
        if purge_all:  # every row, whatever --limit says (as before the trail)
            keys = await self.wallet.fetchall(sql.DEAD_LETTER_KEYS)
            return [(*key, i) for i, key in enumerate(keys, start=1)], []
        chosen: list[Any] = []
        matched: set[str] = set()
        for i, row in enumerate(await self._rows(limit), start=1):
            hits = [ident for ident in idents if self._matches(row, i, ident)]
            matched.update(hits)
            if hits:
                chosen.append((row["id"], row["uuid"], row["message_id"], i))
        return chosen, [ident for ident in idents if ident not in matched]

    async def dlq_purge(self, idents: list[str], purge_all: bool, limit: int, dry_run: bool = False) -> int:
        if dry_run:
            chosen, unknown = await self._purge_selection(idents, purge_all, limit)
            for id_, uuid, message_id, position in chosen:
                _out(
                    {
                        "dry_run": True,
                        "would": "purge",
                        "position": position,
                        "id": id_,
                        "uuid": uuid,
                        "message_id": message_id,
                    }
                )
            code, summary = self._purge_summary(len(chosen), unknown)
            _out({**summary, "dry_run": True})
            return code
        action = trail.Action("dlq purge", {"ids": idents, "all": purge_all, "limit": limit})

        async def purge() -> tuple[int, dict[str, Any]]:
            chosen, unknown = ([], []) if purge_all else await self._purge_selection(idents, purge_all, limit)
            removed = await self._delete_dead_letters(purge_all, [c[0] for c in chosen])
            for _id, uuid, _message_id in removed:
                action.touch(uuid, "purged")
            nameless = [{"id": i, "message_id": m} for i, u, m in removed if not u]
            if nameless:
                action.detail["without_uuid"] = nameless
            self.log.warning("dlq purge", removed=len(removed), idents=idents or "all")
            self.count("dlq_purge", len(removed))
            return self._purge_summary(len(removed), unknown)

        return await self._act(action, purge)

    async def _delete_dead_letters(self, purge_all: bool, ids: list[int]) -> list[Any]:
        """Lock the selected rows (every row for --all), delete exactly those in one transaction;
        the (id, uuid, message_id) of each row deleted."""

        async def work(cur: Any) -> list[Any]:
            if purge_all:
                await cur.execute(sql.LOCK_DEAD_LETTER_KEYS)
            elif ids:
                await cur.execute(sql.among(sql.LOCK_DEAD_LETTERS_AMONG, len(ids)), ids)
            else:
                return []
            locked = list(await cur.fetchall())
            for start in range(0, len(locked), 1000):
                chunk = [row[0] for row in locked[start : start + 1000]]
                await cur.execute(sql.among(sql.DELETE_DEAD_LETTERS_AMONG, len(chunk)), chunk)
            return locked

        return await self.wallet.run(work)

    def _purge_summary(self, removed: int, unknown: list[str]) -> tuple[int, dict[str, Any]]:
        result: dict[str, Any] = {"purged": removed}
        if unknown:
            result["not_in_dlq"] = unknown
            self.log.error(OPS_TAG, action="dlq purge", reason="no dead letter with this id", idents=unknown)
        return (1 if unknown else 0), result  # --all on an empty DLQ did what was asked: it is empty

    # ------------------------------------------------------------------ trace
    async def trace(self, uuid: str, limit: int) -> int:
        uuid = parse_uuid(uuid)
        story: dict[str, Any] = {"uuid": uuid}
        row = await self.orch.fetchrow(sql.SELECT_REQUEST, (uuid,))
        request = None if row is None else Payment.from_row(row)
        story["request"] = (
            None
            if request is None
            else {
                **dump_details(request.details),
                "status": request.status.value,
                "createdAt": request.created_at,
                "finalizedAt": request.finalized_at,
            }
        )
        outbox = await self.orch.fetchone(sql.TRACE_OUTBOX, (uuid,))
        story["outbox"] = (
            None
            if outbox is None
            else {
                "attempts": outbox[0],
                "next_attempt_in_seconds": round(int(outbox[1]) / 1e6, 3),
                "last_error": outbox[2],
                "exhausted": outbox[0] >= self.settings.scanner_max_attempts,
            }
        )
        inbox = await self.wallet.fetchone(sql.TRACE_INBOX, (uuid,))
        story["inbox"] = (
            None
            if inbox is None
            else {
                "succeed": succeed_from_column(inbox[0]),
                "deliveries": inbox[1],
                "createdAt": inbox[2],
                "finalizedAt": inbox[3],
            }
        )
        parked = await self.wallet.fetchone(sql.TRACE_PENDING_CALLBACK, (uuid,))
        story["parked_callback"] = None if parked is None else {"attempts": parked[0], "last_error": parked[1]}
        rows = await self.wallet.fetchrows(sql.LIST_DEAD_LETTERS, (limit,))
        story["dlq"] = [self.describe(row, i) for i, row in enumerate(rows, start=1) if row["uuid"] == uuid]
        story["operator_actions"] = await trail.for_uuid(self.orch, uuid)
        story["story"] = _story(story)
        self.count("trace")
        _out(story)
        return 0 if request is not None or inbox is not None else 1


def _story(s: dict[str, Any]) -> str:
    actions = s["operator_actions"]
    said = [f"{a['command']} by {a['who']} at {a['at']}: {a['outcome']}" for a in actions]
    return _payment_story(s) + (f"; operator actions: {', '.join(said)}" if said else "")


def _payment_story(s: dict[str, Any]) -> str:
    r, o, i, p, d = s["request"], s["outbox"], s["inbox"], s["parked_callback"], s["dlq"]
    if r is None:
        return "no payment with this uuid" + (
            ": but the wallet has an inbox row (an orphan: see `chancepay audit`)" if i else ""
        )
    parts = [f"accepted {r['createdAt']}"]
    if o is not None:
        parts.append(
            "exhausted in the outbox: `chancepay outbox retry`"
            if o["exhausted"]
            else f"waiting in the outbox (attempt {o['attempts']}, next in {o['next_attempt_in_seconds']} s)"
        )
    elif i is None:
        parts.append("published; not decided by the wallet yet")
    if i is not None:
        parts.append(
            "decided by the wallet: "
            + ("success" if i["succeed"] else "failure" if i["succeed"] is False else "pending")
        )
    if d:
        parts.append(f"dead-lettered: {len(d)} message(s) in the DLQ (`chancepay dlq show {s['uuid']}`)")
    if p is not None:
        parts.append(f"result parked, being retried ({p['attempts']} tries)")
    parts.append(f"request {r['status']}" + (f" at {r['finalizedAt']}" if r["finalizedAt"] else ""))
    return "; ".join(parts)


async def ops_main(settings: Settings, args: Any) -> int:
    ops = Ops(settings)
    try:
        if args.command == "outbox":
            if args.action == "list":
                return await ops.outbox_list(args.all)
            return await ops.outbox_retry(args.uuids, args.all_exhausted, args.dry_run)
        if args.command == "dlq":
            if args.action == "list":
                return await ops.dlq_list(args.limit)
            if args.action == "show":
                return await ops.dlq_show(args.ids[0], args.limit)
            if args.action == "replay":
                return await ops.dlq_replay(args.ids, args.all, args.limit, args.dry_run)
            return await ops.dlq_purge(args.ids, args.all, args.limit, args.dry_run)
        return await ops.trace(args.uuid, args.limit)
    except Exception as exc:
        ops.log.error(OPS_TAG, action=f"{args.command} {getattr(args, 'action', '')}".strip(), error=repr(exc))
        return 1
    finally:
        await ops.close()
