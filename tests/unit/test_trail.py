"""The operator trail's pure parts (core/trail.py): who acts, what a row holds, how it is written, what
happens when it cannot be, and the append-only rule over the product's SQL."""

from __future__ import annotations

import asyncio
import getpass
import pwd
import re
from pathlib import Path
from typing import Any

import pytest

from chancepay.core import sql, trail
from chancepay.core.config import ConfigError, Settings
from chancepay.core.db import DatabaseUnavailable
from tests.support.recording_log import RecordingLog

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "chancepay"
NAMES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def test_who_is_the_configured_operator_else_the_os_user(monkeypatch) -> None:
    assert trail.operator("alice") == "alice"
    monkeypatch.setenv("USER", "bob")
    for name in ("LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert trail.operator("") == "bob"


@pytest.mark.parametrize("error", [KeyError, OSError])
def test_a_uid_with_no_passwd_entry_is_named_by_its_number(monkeypatch, error) -> None:
    """What getpass meets in a container run as a uid /etc/passwd does not list, with no USER set:
    KeyError up to Python 3.12, OSError from 3.13."""
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> Any:
        raise error(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(error):
        getpass.getuser()
    monkeypatch.setattr("os.getuid", lambda: 10001)
    assert trail.operator("") == "uid:10001"


def test_chancepay_operator_is_bounded_by_the_column() -> None:
    assert Settings.from_env({"CHANCEPAY_OPERATOR": "a" * trail.WHO_CHARS}).operator == "a" * trail.WHO_CHARS
    with pytest.raises(ConfigError, match="CHANCEPAY_OPERATOR must be at most 128 characters"):
        Settings.from_env({"CHANCEPAY_OPERATOR": "a" * (trail.WHO_CHARS + 1)})


def test_an_action_keeps_each_uuids_first_outcome_and_its_summary() -> None:
    action = trail.Action("dlq purge", {"ids": [], "all": True})
    action.touch("u1", "purged")
    action.touch("u1", "other")
    action.touch(None, "purged")  # a dead letter with no readable uuid names none
    action.detail["without_uuid"] = [{"id": 4, "message_id": None}]
    action.finish(0, {"purged": 2})
    assert action.outcomes == {"u1": "purged"} and action.result == trail.OK
    assert action.detail == {"purged": 2, "without_uuid": [{"id": 4, "message_id": None}]}
    action.finish(1, {"purged": 0})
    assert action.result == trail.ERROR
    action.fail(RuntimeError("boom"))
    assert action.result == trail.ERROR and action.detail["error"] == "RuntimeError('boom')"


class Cursor:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.lastrowid = 41

    async def execute(self, statement: str, args: Any = None) -> None:
        self.statements.append((statement, args))


class Db:
    """Runs `work` on one recording cursor (Database.run's shape), or fails like an outage."""

    def __init__(self, fail: bool = False) -> None:
        self.cursor = Cursor()
        self.fail = fail

    async def run(self, work: Any) -> Any:
        if self.fail:
            raise DatabaseUnavailable("no answer from db:3306 within the timeout")
        return await work(self.cursor)


def test_a_row_and_its_uuids_are_written_in_one_transaction_in_chunks() -> None:
    action = trail.Action("outbox retry", {"uuids": [], "all_exhausted": True})
    uuids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(2500)]
    for u in uuids:
        action.touch(u, "retried")
    action.finish(0, {"retried": 2500})
    db = Db()
    assert asyncio.run(trail.record(db, action, "alice")) == 41  # type: ignore[arg-type]
    (insert, args), *chunks = db.cursor.statements
    assert insert == sql.INSERT_OPERATOR_ACTION
    assert args[:2] == ("alice", "outbox retry") and args[4] == "ok"
    assert args[2] == '{"uuids":[],"all_exhausted":true}' and args[5] == '{"retried":2500}'
    assert args[3].startswith(f'["{uuids[0]}"')
    assert [len(a) // 3 for _s, a in chunks] == [1000, 1000, 500]
    assert chunks[0][0] == sql.operator_action_uuid_rows(1000)
    assert chunks[2][1][-3:] == [uuids[-1], 41, "retried"]


def test_a_row_that_cannot_be_written_is_logged_whole() -> None:
    action = trail.Action("dlq replay", {"ids": ["#1"], "all": False, "limit": 10000})
    action.touch("u1", "replayed")
    action.finish(0, {"replayed": 1, "already_final": 0, "not_a_payment": 0})
    log = RecordingLog()
    assert asyncio.run(trail.record_or_log(Db(fail=True), action, "bob", log)) is False  # type: ignore[arg-type]
    (line,) = log.tagged(trail.RECORD_TAG)
    assert line["who"] == "bob" and line["command"] == "dlq replay" and line["uuids"] == {"u1": "replayed"}
    assert line["arguments"] == {"ids": ["#1"], "all": False, "limit": 10000} and line["result"] == "ok"
    assert line["detail"]["replayed"] == 1 and "no answer" in line["error"]
    log = RecordingLog()
    assert asyncio.run(trail.record_or_log(Db(), action, "bob", log)) is True  # type: ignore[arg-type]
    assert log.lines == [
        ("operator action recorded", {"id": 41, "who": "bob", "command": "dlq replay", "result": "ok", "uuids": 1})
    ]


CHANGES_THE_TRAIL = re.compile(
    r"\b(UPDATE|DELETE\s+FROM|REPLACE\s+INTO|TRUNCATE(\s+TABLE)?|ALTER\s+TABLE|DROP\s+TABLE|RENAME\s+TABLE)"
    r"\s+`?operator_action",
    re.IGNORECASE,
)


def _changes(text: str) -> list[str]:
    return [m.group(0) for m in CHANGES_THE_TRAIL.finditer(text)]


def test_the_trail_is_append_only_in_the_products_sql() -> None:
    """No statement of the product updates, deletes, replaces, truncates or alters the trail's tables."""
    found = {str(p.relative_to(PACKAGE)): _changes(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {}
    names = [v for v in vars(sql).values() if isinstance(v, str) and "operator_action" in v]
    assert names and all(re.match(r"\s*(INSERT INTO|SELECT|CREATE TABLE IF NOT EXISTS)\s", v) for v in names)
    assert all(re.match(r"\s*CREATE TABLE IF NOT EXISTS operator_action", v) for v in sql.ORCHESTRATOR_V2)


def test_the_append_only_guard_would_catch_a_change() -> None:
    assert _changes('X = "DELETE FROM operator_action WHERE id = %s"') == ["DELETE FROM operator_action"]
    assert _changes('Y = "update operator_action_uuid SET outcome = %s"') == ["update operator_action"]
    assert _changes('Z = "TRUNCATE TABLE operator_action"') == ["TRUNCATE TABLE operator_action"]
    assert _changes('W = "INSERT INTO operator_action (who) VALUES (%s)"') == []
