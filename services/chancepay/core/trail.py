"""The operator trail (CONTRACT.md "Audit"): every run of an operator command that changes state —
`outbox retry`, `dlq replay`, `dlq purge`, and a `reconcile` pass that repaired or failed something —
leaves one row in the orchestrator's `operator_action` table: when (the database clock), who
(CHANCEPAY_OPERATOR, else the OS user), the command and its arguments, the uuids it named or acted on
(each also a row of `operator_action_uuid` with what happened to it, which `chancepay trace` reads),
and the result (`ok` or `error`, with the command's own summary as detail).

Ordering: the action first, then its row, with the result it had. The dead letters live in the
wallet's database and the trail in the orchestrator's, so no transaction spans both; a row written
before the action could only say what was meant, not what happened. Before acting, a command checks
that the trail's tables are there (the orchestrator schema at v2), so a missing table refuses the
command with nothing changed. If the row cannot be written after the action (the database went
away in between), the whole row is logged as `[FAILED TO RECORD OPERATOR ACTION]` and the command
exits 1: the action stands, the log line is its record. A process killed between the action and
its row leaves no row (the commands are idempotent: running one again records what it then finds).

Append-only: the product's statements on these tables are INSERTs and SELECTs only (core/sql.py; a
unit test holds it). The database does not enforce it: the orchestrator's user holds ALL on its
schema (core/schema.py), and a table-level REVOKE cannot narrow a schema-wide grant. A trigger
refusing UPDATE and DELETE would need SUPER wherever a binary log is on (the default of MySQL 8.x
and managed databases), so `chancepay migrate` as the role's user would fail there; and whoever
holds the schema's ALL could drop it again. Each recorded action is also logged as a JSON line
("operator action recorded"), a copy outside the database.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from typing import Any

import orjson

from chancepay.core import sql
from chancepay.core.db import Database, SchemaNotReady
from chancepay.core.errors import ChancePayError

RECORD_TAG = "[FAILED TO RECORD OPERATOR ACTION]"
OK, ERROR = "ok", "error"
WHO_CHARS = 128  # operator_action.who
UUID_ROWS_PER_STATEMENT = 1000


class TrailUnavailable(ChancePayError):
    """The trail's tables are not there: the orchestrator schema is older than this code."""


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


@dataclasses.dataclass
class Action:
    """One run of a command, filled in while it acts: each uuid it named or acted on with what
    happened to it (the first outcome a uuid gets stays), the result and the command's summary."""

    command: str
    arguments: dict[str, Any]
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    result: str = OK
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def touch(self, uuid: str | None, outcome: str) -> None:
        if uuid:
            self.outcomes.setdefault(uuid, outcome)

    def finish(self, exit_code: int, summary: dict[str, Any]) -> None:
        """The result of a command that ran to its end: its exit code and the summary it printed
        (what it had added to `detail` while acting kept beside)."""
        self.result = OK if exit_code == 0 else ERROR
        self.detail = {**summary, **self.detail}

    def fail(self, exc: BaseException) -> None:
        self.result = ERROR
        self.detail = {**self.detail, "error": repr(exc)[:2000]}

    def fields(self) -> dict[str, Any]:
        """The row as a log line's fields (what `[FAILED TO RECORD OPERATOR ACTION]` carries)."""
        return {
            "command": self.command,
            "arguments": self.arguments,
            "uuids": self.outcomes,
            "result": self.result,
            "detail": self.detail,
        }


def operator(configured: str) -> str:
    """Who acts: CHANCEPAY_OPERATOR when set, else the OS user (LOGNAME/USER, else the password
    database); a process whose uid has no passwd entry (a container's uid 10001) is `uid:<n>`."""
    if configured:
        return configured
    try:
        name = getpass.getuser()
    except Exception:  # KeyError (<= 3.12) or OSError (3.13+): no such user, and no variable names one
        name = ""
    return (name or f"uid:{os.getuid()}")[:WHO_CHARS]


async def ready(db: Database) -> None:
    """The trail's tables are there; SchemaNotReady (a DatabaseUnavailable: waited for where the
    caller waits for its database) when they are not."""
    await db.fetchall(sql.OPERATOR_TRAIL_READY)


async def require(db: Database) -> None:
    """Refuse (TrailUnavailable) unless the trail's tables are there; nothing is changed either way."""
    try:
        await ready(db)
    except SchemaNotReady as exc:
        raise TrailUnavailable(
            f"the operator trail cannot be written ({exc}); nothing was changed: run `chancepay migrate`"
        ) from None


async def record(db: Database, action: Action, who: str) -> int:
    """Append `action`'s row and its uuids' rows in one transaction; the new row's id."""
    row = (who, action.command, _json(action.arguments), _json(list(action.outcomes)), action.result)
    pairs = list(action.outcomes.items())

    async def work(cur: Any) -> int:
        await cur.execute(sql.INSERT_OPERATOR_ACTION, (*row, _json(action.detail)))
        action_id = int(cur.lastrowid)
        for start in range(0, len(pairs), UUID_ROWS_PER_STATEMENT):
            chunk = pairs[start : start + UUID_ROWS_PER_STATEMENT]
            params = [value for uuid, outcome in chunk for value in (uuid, action_id, outcome)]
            await cur.execute(sql.operator_action_uuid_rows(len(chunk)), params)
        return action_id

    return await db.run(work)


async def record_or_log(db: Database, action: Action, who: str, log: Any) -> bool:
    """Record `action`; True when its row is written. Otherwise the whole row goes to the log under
    RECORD_TAG (the action stands; the caller exits non-zero)."""
    try:
        action_id = await record(db, action, who)
    except Exception as exc:
        log.error(RECORD_TAG, who=who, error=repr(exc)[:500], **action.fields())
        return False
    log.info(
        "operator action recorded",
        id=action_id,
        who=who,
        command=action.command,
        result=action.result,
        uuids=len(action.outcomes),
    )
    return True


async def for_uuid(db: Database, uuid: str) -> list[dict[str, Any]]:
    """The operator actions that named `uuid`, oldest first, each with what happened to it."""
    rows = await db.fetchrows(sql.TRACE_OPERATOR_ACTIONS, (uuid,))
    return [
        {
            "id": r["id"],
            "at": r["at"],
            "who": r["who"],
            "command": r["command"],
            "arguments": orjson.loads(r["arguments"]),
            "outcome": r["outcome"],
            "result": r["result"],
            "detail": orjson.loads(r["detail"]),
        }
        for r in rows
    ]
