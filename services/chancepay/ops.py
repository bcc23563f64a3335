"""Operator commands: `chancepay outbox`, `chancepay dlq`, `chancepay trace` (CONTRACT "Processes").

Inspect and repair without SQL. Every command prints JSON on stdout (one object, or one per line
for lists), logs what it did on stderr (JSON lines, like every role), counts it in
chancepay_operator_actions_total{action} (pushed to CHANCEPAY_PUSHGATEWAY_URL when set, as the
reconciler does), and is idempotent: running it twice changes nothing the first run did not.

- outbox list [--all]       rows at the attempt limit (exhausted) or every row
- outbox retry UUID...|--all-exhausted
                            exhausted rows back into rotation: attempts 0, due now; exit 1 when
                            a uuid has no outbox row
- dlq list                  dead-lettered messages, without taking them (got, then requeued),
                            each with why it is there (signature, parse) and its uuid if readable
- dlq show ID               one message in full (ID: the message id, i.e. the uuid, or #position)
- dlq replay ID...|--all    back through the normal path: a message whose uuid is a pending
                            payment goes back into the OUTBOX from the request row (the scanner
                            signs it again; the inbox deduplicates); the DLQ copy is removed.
                            A message with no such payment is left where it is and reported.
- dlq purge ID...|--all     remove messages from the DLQ
- trace UUID                one payment's whole story: request, outbox, inbox, parked
                            callback, DLQ
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, push_to_gateway

from chancepay.core import signing, sql, topology
from chancepay.core.broker import close_quietly, connect_any
from chancepay.core.codec import InvalidPayload, parse_uuid, readable_uuid
from chancepay.core.config import Settings
from chancepay.core.db import Database
from chancepay.core.logging import get_logger
from chancepay.core.payment import Payment, PaymentMessage, dump_details

OPS_TAG = "[FAILED TO OPERATE]"


def _out(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")


class Ops:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger()
        self.registry = CollectorRegistry()
        self.actions = Counter("chancepay_operator_actions_total", "Operator actions, by action (rows or messages).",
                               ["action"], registry=self.registry)
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
        self.actions.labels(action=action).inc(n)

    async def close(self) -> None:
        for db in (self._orch, self._wallet):
            if db is not None:
                await db.close()
        if self.settings.pushgateway_url:
            try:
                push_to_gateway(self.settings.pushgateway_url, job="chancepay-operator", registry=self.registry,
                                timeout=5)
            except Exception as exc:
                self.log.error("[FAILED TO PUSH METRICS]", error=repr(exc))

    # ------------------------------------------------------------------ outbox
    async def outbox_list(self, all_rows: bool) -> int:
        statement = sql.LIST_OUTBOX if all_rows else sql.LIST_OUTBOX_EXHAUSTED
        rows = await self.orch.fetchall(statement, (self.settings.scanner_max_attempts,) if not all_rows else None)
        for uuid, attempts, age_us, next_in_us, last_error in rows:
            _out({"uuid": uuid, "attempts": attempts, "exhausted": attempts >= self.settings.scanner_max_attempts,
                  "age_seconds": round(int(age_us) / 1e6, 3),
                  "next_attempt_in_seconds": round(int(next_in_us) / 1e6, 3), "last_error": last_error})
        self.count("outbox_list")
        return 0

    async def outbox_retry(self, uuids: list[str], all_exhausted: bool) -> int:
        max_attempts = self.settings.scanner_max_attempts
        if all_exhausted:
            changed = await self.orch.execute(sql.RETRY_ALL_EXHAUSTED_OUTBOX, (max_attempts,))
        else:
            for u in uuids:
                parse_uuid(u)
            changed = await self.orch.execute(sql.among(sql.RETRY_EXHAUSTED_OUTBOX, len(uuids)),
                                              (max_attempts, *uuids))
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
    async def _with_channel(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        connection = await connect_any(self.settings.amqp_url_list)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await topology.declare(channel)
            return await work(channel)
        finally:
            await close_quietly(connection)

    def describe(self, message: Any, position: int) -> dict[str, Any]:
        body = bytes(message.body)
        props = message.header.properties
        headers = props.headers or {}
        unsigned = signing.verify(body, headers, self.settings.message_keys)
        try:
            PaymentMessage.decode(body)
            parse_error = None
        except InvalidPayload as exc:
            parse_error = str(exc)
        deaths = headers.get("x-death") or []
        first = deaths[0] if deaths else {}
        return {
            "position": position,
            "message_id": props.message_id,
            "uuid": readable_uuid(body, props.message_id),
            "signature": "ok" if unsigned is None else unsigned,
            "parse": "ok" if parse_error is None else parse_error,
            "dead_lettered": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in first.items()
                              if k in ("reason", "queue", "count", "time")} if first else None,
            "body_bytes": len(body),
            "body_preview": body[:256].decode("utf-8", "replace"),
        }

    async def _browse(self, channel: Any, limit: int) -> list[Any]:
        """Take up to `limit` DLQ messages without acknowledging them (the caller requeues or acks)."""
        from pamqp import commands as spec

        got: list[Any] = []
        while len(got) < limit:
            message = await channel.basic_get(topology.DLQ, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetEmpty):
                break
            got.append(message)
        return got

    @staticmethod
    def _matches(message: Any, position: int, ident: str) -> bool:
        if ident.startswith("#"):
            return ident[1:].isdigit() and int(ident[1:]) == position
        mid = message.header.properties.message_id
        return ident in (mid, readable_uuid(bytes(message.body), mid))

    async def dlq_walk(self, limit: int, decide: Callable[[Any, int], Awaitable[str]]) -> None:
        """Take each DLQ message (up to `limit`); `decide` answers "keep" (requeued afterwards, in
        order) or "remove" (acked)."""

        async def work(channel: Any) -> None:
            messages = await self._browse(channel, limit)
            try:
                for i, m in enumerate(messages, start=1):
                    if await decide(m, i) == "remove":
                        await channel.basic_ack(m.delivery.delivery_tag)
                    else:
                        await channel.basic_nack(m.delivery.delivery_tag, requeue=True)
            except BaseException:
                for m in messages:  # nothing is lost: whatever was not settled goes back
                    try:
                        await channel.basic_nack(m.delivery.delivery_tag, requeue=True)
                    except Exception:
                        pass
                raise

        await self._with_channel(work)

    async def dlq_list(self, limit: int) -> int:
        async def show(m: Any, i: int) -> str:
            _out(self.describe(m, i))
            return "keep"

        await self.dlq_walk(limit, show)
        self.count("dlq_list")
        return 0

    async def dlq_show(self, ident: str, limit: int) -> int:
        found: list[dict[str, Any]] = []

        async def show(m: Any, i: int) -> str:
            if self._matches(m, i, ident):
                d = self.describe(m, i)
                props = m.header.properties
                d["body_base64"] = base64.b64encode(bytes(m.body)).decode()
                d["headers"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()
                                if k != "x-death"}
                found.append(d)
            return "keep"

        await self.dlq_walk(limit, show)
        self.count("dlq_show")
        if not found:
            _out({"error": f"no DLQ message {ident}"})
            return 1
        for d in found:
            _out(d)
        return 0

    async def dlq_replay(self, idents: list[str], replay_all: bool, limit: int) -> int:
        summary = {"replayed": 0, "already_final": 0, "not_a_payment": 0}

        async def replay(m: Any, i: int) -> str:
            if not replay_all and not any(self._matches(m, i, ident) for ident in idents):
                return "keep"
            uuid = readable_uuid(bytes(m.body), m.header.properties.message_id)
            row = await self.orch.fetchrow(sql.SELECT_REQUEST, (uuid,)) if uuid else None
            if row is None:
                summary["not_a_payment"] += 1
                self.log.error(OPS_TAG, action="dlq replay", uuid=uuid, message_id=m.header.properties.message_id,
                               reason="no payment with this uuid: left in the DLQ (see `chancepay dlq show`)")
                return "keep"
            payment = Payment.from_row(row)
            if payment.succeed is not None:
                summary["already_final"] += 1
                self.log.info("dlq replay: payment already final; DLQ copy removed", uuid=uuid,
                              succeed=payment.succeed)
                return "remove"
            payload = payment.message().encode()
            await self.orch.execute(sql.REENQUEUE_OUTBOX, (uuid, payload))
            summary["replayed"] += 1
            self.log.warning("dlq replay: payment put back into the outbox from its request row", uuid=uuid)
            return "remove"

        await self.dlq_walk(limit, replay)
        self.count("dlq_replay", summary["replayed"])
        _out(summary)
        return 0

    async def dlq_purge(self, idents: list[str], purge_all: bool, limit: int) -> int:
        removed = 0
        if purge_all:
            async def purge(channel: Any) -> int:
                return int((await channel.queue_purge(topology.DLQ)).message_count)

            removed = await self._with_channel(purge)
        else:
            async def pick(m: Any, i: int) -> str:
                nonlocal removed
                if any(self._matches(m, i, ident) for ident in idents):
                    removed += 1
                    return "remove"
                return "keep"

            await self.dlq_walk(limit, pick)
        self.log.warning("dlq purge", removed=removed, idents=idents or "all")
        self.count("dlq_purge", removed)
        _out({"purged": removed})
        return 0

    # ------------------------------------------------------------------ trace
    async def trace(self, uuid: str, limit: int) -> int:
        uuid = parse_uuid(uuid)
        story: dict[str, Any] = {"uuid": uuid}
        row = await self.orch.fetchrow(sql.SELECT_REQUEST, (uuid,))
        request = None if row is None else Payment.from_row(row)
        story["request"] = None if request is None else {
            **dump_details(request.details), "status": request.status.value,
            "createdAt": request.created_at, "finalizedAt": request.finalized_at}
        outbox = await self.orch.fetchone(sql.TRACE_OUTBOX, (uuid,))
        story["outbox"] = None if outbox is None else {
            "attempts": outbox[0], "next_attempt_in_seconds": round(int(outbox[1]) / 1e6, 3), "last_error": outbox[2],
            "exhausted": outbox[0] >= self.settings.scanner_max_attempts}
        inbox = await self.wallet.fetchone(sql.TRACE_INBOX, (uuid,))
        story["inbox"] = None if inbox is None else {
            "succeed": None if inbox[0] is None else bool(inbox[0]), "deliveries": inbox[1], "createdAt": inbox[2],
            "finalizedAt": inbox[3]}
        parked = await self.wallet.fetchone(sql.TRACE_PENDING_CALLBACK, (uuid,))
        story["parked_callback"] = None if parked is None else {"attempts": parked[0], "last_error": parked[1]}
        in_dlq: list[dict[str, Any]] = []

        async def look(m: Any, i: int) -> str:
            if self._matches(m, i, uuid):
                in_dlq.append(self.describe(m, i))
            return "keep"

        try:
            await self.dlq_walk(limit, look)
            story["dlq"] = in_dlq
        except Exception as exc:
            story["dlq"] = f"unknown: {exc!r}"
        story["story"] = _story(story)
        self.count("trace")
        _out(story)
        return 0 if request is not None or inbox is not None else 1


def _story(s: dict[str, Any]) -> str:
    r, o, i, p, d = s["request"], s["outbox"], s["inbox"], s["parked_callback"], s["dlq"]
    if r is None:
        return ("no payment with this uuid" + (": but the wallet has an inbox row (an orphan: see `chancepay audit`)"
                                               if i else ""))
    parts = [f"accepted {r['createdAt']}"]
    if o is not None:
        parts.append("exhausted in the outbox: `chancepay outbox retry`" if o["exhausted"] else
                     f"waiting in the outbox (attempt {o['attempts']}, next in {o['next_attempt_in_seconds']} s)")
    elif i is None:
        parts.append("published; not decided by the wallet yet" + (" (the message is in the DLQ)" if d else ""))
    if i is not None:
        parts.append("decided by the wallet: " + ("success" if i["succeed"] else "failure" if i["succeed"] is False
                                                  else "pending"))
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
            if not args.uuids and not args.all_exhausted:
                raise SystemExit("chancepay outbox retry: give UUIDs or --all-exhausted")
            return await ops.outbox_retry(args.uuids, args.all_exhausted)
        if args.command == "dlq":
            if args.action == "list":
                return await ops.dlq_list(args.limit)
            if args.action == "show":
                return await ops.dlq_show(args.ids[0], args.limit)
            if not args.ids and not args.all:
                raise SystemExit(f"chancepay dlq {args.action}: give IDs or --all")
            if args.action == "replay":
                return await ops.dlq_replay(args.ids, args.all, args.limit)
            return await ops.dlq_purge(args.ids, args.all, args.limit)
        return await ops.trace(args.uuid, args.limit)
    except SystemExit:
        raise
    except Exception as exc:
        ops.log.error(OPS_TAG, action=f"{args.command} {getattr(args, 'action', '')}".strip(), error=repr(exc))
        return 1
    finally:
        await ops.close()

