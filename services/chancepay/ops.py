"""Operator commands: `chancepay outbox`, `chancepay dlq`, `chancepay trace` (CONTRACT "Processes").

Inspect and repair without SQL. Every command prints JSON on stdout (one object, or one per line
for lists), logs what it did on stderr (JSON lines, like every role), counts it in
chancepay_operator_actions_total{action} (pushed to CHANCEPAY_PUSHGATEWAY_URL when set, as the
reconciler does), and is idempotent: running it twice changes nothing the first run did not.

- outbox list [--all]       rows at the attempt limit (exhausted) or every row
- outbox retry UUID...|--all-exhausted
                            exhausted rows back into rotation: attempts 0, due now; exit 1 when
                            a uuid has no outbox row
- dlq list                  dead-lettered messages, each with why it is there (signature, parse)
                            and its uuid if readable. They are rows of the wallet's dead_letter
                            table (the wallet moves every DLQ message there, core/deadletters.py):
                            looking is a SELECT and never a broker delivery
- dlq show ID               one message in full (ID: the message id, i.e. the uuid, or #position)
- dlq replay ID...|--all    back through the normal path: a message whose uuid is a pending
                            payment goes back into the OUTBOX from the request row (the scanner
                            signs it again; the inbox deduplicates); then its row is deleted.
                            A message with no such payment is left where it is and reported.
- dlq purge ID...|--all     delete dead letters
- trace UUID                one payment's whole story: request, outbox, inbox, parked
                            callback, DLQ
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import orjson
from prometheus_client import push_to_gateway

from chancepay.core import signing, sql, topology
from chancepay.core.broker import close_quietly, connect_any
from chancepay.core.codec import InvalidPayload, parse_uuid
from chancepay.core.config import Settings
from chancepay.core.db import Database
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Payment, PaymentMessage, dump_details, succeed_from_column

OPS_TAG = "[FAILED TO OPERATE]"


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

    async def outbox_retry(self, uuids: list[str], all_exhausted: bool) -> int:
        max_attempts = self.settings.scanner_max_attempts
        if all_exhausted:
            changed = await self.orch.execute(sql.RETRY_ALL_EXHAUSTED_OUTBOX, (max_attempts,))
        else:
            for u in uuids:
                parse_uuid(u)
            changed = await self.orch.execute(sql.among(sql.RETRY_EXHAUSTED_OUTBOX, len(uuids)), (max_attempts, *uuids))
        self.log.info("outbox rows back into rotation", rows=changed, uuids=uuids or "all exhausted")
        self.count("outbox_retry", changed)
        # A uuid with no outbox row at all (never created, or long since published) could not be
        # retried: said, and the exit is 1. A row already in rotation is fine (idempotent).
        unknown: list[str] = []
        if uuids:
            present = {u for (u,) in await self.orch.fetchall(sql.among(sql.OUTBOX_AMONG, len(uuids)), uuids)}
            unknown = [u for u in uuids if u not in present]
        if unknown:
            self.log.error(OPS_TAG, action="outbox retry", error="no outbox row with this uuid", uuids=unknown)
            _out({"retried": changed, "not_in_outbox": unknown})
            return 1
        _out({"retried": changed})
        return 0

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

    async def dlq_replay(self, idents: list[str], replay_all: bool, limit: int) -> int:
        summary: dict[str, Any] = {"replayed": 0, "already_final": 0, "not_a_payment": 0}
        matched: set[str] = set()
        for i, row in enumerate(await self._rows(limit), start=1):
            hits = [ident for ident in idents if self._matches(row, i, ident)]
            matched.update(hits)
            if not replay_all and not hits:
                continue
            uuid = row["uuid"]
            request = await self.orch.fetchrow(sql.SELECT_REQUEST, (uuid,)) if uuid else None
            if request is None:
                summary["not_a_payment"] += 1
                self.log.error(
                    OPS_TAG,
                    action="dlq replay",
                    uuid=uuid,
                    message_id=row["message_id"],
                    reason="no payment with this uuid: left in the DLQ (see `chancepay dlq show`)",
                )
                continue
            payment = Payment.from_row(request)
            if payment.succeed is not None:
                summary["already_final"] += 1
                await self.wallet.execute(sql.DELETE_DEAD_LETTER, (row["id"],))
                self.log.info("dlq replay: payment already final; DLQ copy removed", uuid=uuid, succeed=payment.succeed)
                continue
            # The outbox row is committed before the dead letter is deleted: a crash in between
            # leaves both, and a second replay is harmless (INSERT IGNORE; the inbox deduplicates).
            await self.orch.execute(sql.REENQUEUE_OUTBOX, (uuid, payment.message().encode()))
            await self.wallet.execute(sql.DELETE_DEAD_LETTER, (row["id"],))
            summary["replayed"] += 1
            self.log.warning("dlq replay: payment put back into the outbox from its request row", uuid=uuid)
        self.count("dlq_replay", summary["replayed"])
        unknown = [ident for ident in idents if ident not in matched]
        if unknown:
            summary["not_in_dlq"] = unknown
            self.log.error(OPS_TAG, action="dlq replay", reason="no dead letter with this id", idents=unknown)
        _out(summary)
        # The contract: non-zero when it could not do what was asked (nothing to replay, a message
        # that is no payment, an id that names nothing).
        done = summary["replayed"] + summary["already_final"]
        return 0 if done and not summary["not_a_payment"] and not unknown else 1

    async def dlq_purge(self, idents: list[str], purge_all: bool, limit: int) -> int:
        removed = 0
        if purge_all:
            removed = await self.wallet.execute(sql.DELETE_ALL_DEAD_LETTERS)
        matched: set[str] = set()
        if not purge_all:
            for i, row in enumerate(await self._rows(limit), start=1):
                hits = [ident for ident in idents if self._matches(row, i, ident)]
                matched.update(hits)
                if hits:
                    removed += await self.wallet.execute(sql.DELETE_DEAD_LETTER, (row["id"],))
        self.log.warning("dlq purge", removed=removed, idents=idents or "all")
        self.count("dlq_purge", removed)
        unknown = [ident for ident in idents if ident not in matched]
        result: dict[str, Any] = {"purged": removed}
        if unknown:
            result["not_in_dlq"] = unknown
            self.log.error(OPS_TAG, action="dlq purge", reason="no dead letter with this id", idents=unknown)
        _out(result)
        return 1 if unknown else 0  # --all on an empty DLQ did what was asked: it is empty

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
        story["story"] = _story(story)
        self.count("trace")
        _out(story)
        return 0 if request is not None or inbox is not None else 1


def _story(s: dict[str, Any]) -> str:
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
            return await ops.outbox_retry(args.uuids, args.all_exhausted)
        if args.command == "dlq":
            if args.action == "list":
                return await ops.dlq_list(args.limit)
            if args.action == "show":
                return await ops.dlq_show(args.ids[0], args.limit)
            if args.action == "replay":
                return await ops.dlq_replay(args.ids, args.all, args.limit)
            return await ops.dlq_purge(args.ids, args.all, args.limit)
        return await ops.trace(args.uuid, args.limit)
    except Exception as exc:
        ops.log.error(OPS_TAG, action=f"{args.command} {getattr(args, 'action', '')}".strip(), error=repr(exc))
        return 1
    finally:
        await ops.close()
