"""The operator trail (issue 23; CONTRACT.md "Audit"), on the real database and broker through real
`chancepay` processes: every run of `outbox retry`, `dlq replay` and `dlq purge`, and every
`reconcile` pass that repaired something, leaves exactly one append-only row (who, command,
arguments, uuids with what happened to each, result) that `chancepay trace` shows; `--dry-run`
prints exactly what the real run then moves and changes nothing anywhere; docs/operations.md's
"Operator trail" commands run here as written."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from chancepay.core import topology
from tests.integration.test_operator import _dead_letter, dead_letters, run
from tests.support.env import MESSAGE_KEY, wait_until
from tests.support.faults import publish_raw

ROOT = Path(__file__).resolve().parents[2]
FORGED = "8b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MAX_ATTEMPTS = {"CHANCEPAY_SCANNER_MAX_ATTEMPTS": "3"}


def trail(env) -> list[dict]:
    """Every row of the trail, oldest first, with each row's uuids and their outcomes."""
    rows = env.orch_sql("SELECT id, who, command, arguments, uuids, result, detail FROM operator_action ORDER BY id")
    out = []
    for id_, who, command, arguments, uuids, result, detail in rows:
        outcomes = dict(env.orch_sql("SELECT uuid, outcome FROM operator_action_uuid WHERE action_id = %s", (id_,)))
        out.append(
            {
                "id": id_,
                "who": who,
                "command": command,
                "arguments": json.loads(arguments),
                "uuids": json.loads(uuids),
                "outcomes": outcomes,
                "result": result,
                "detail": json.loads(detail),
            }
        )
    return out


def everything(env) -> dict:
    """Every row of every table of both schemas, and the depth of both queues."""
    state: dict = {}
    for name, query in (("orchestrator", env.orch_sql), ("wallet", env.wallet_sql)):
        for (table,) in query("SHOW TABLES"):
            state[f"{name}.{table}"] = query(f"SELECT * FROM `{table}` ORDER BY 1")
    for queue in (topology.QUEUE, topology.DLQ):
        try:
            state[queue] = env.queue_depth(queue)
        except Exception as exc:  # not declared: nothing has started that declares it
            state[queue] = type(exc).__name__
    return state


def split(lines: list[dict]) -> tuple[list[dict], dict]:
    """A dry run's output: the item lines, and its summary (the last line)."""
    assert lines and all(line["dry_run"] is True for line in lines), lines
    return lines[:-1], lines[-1]


def test_outbox_retry_is_recorded_and_its_dry_run_changes_nothing(make_stack, env) -> None:
    s = make_stack(**MAX_ATTEMPTS).start("orchestrator")
    stuck = s.pay_many(2, "stuck")
    (fresh,) = s.pay_many(1, "fresh")
    env.orch_sql("UPDATE outbox SET attempts = 3, last_error = 'returned: NO_ROUTE' WHERE uuid IN (%s, %s)", stuck)
    before = everything(env)

    code, lines = run(env, "outbox", "retry", "--all-exhausted", "--dry-run", **MAX_ATTEMPTS)
    items, summary = split(lines)
    assert code == 0 and summary == {"retried": 2, "dry_run": True}
    assert sorted(i["uuid"] for i in items) == sorted(stuck)
    assert all(i["would"] == "retry" and i["attempts"] == 3 and "NO_ROUTE" in i["last_error"] for i in items)
    assert everything(env) == before, "a dry run changes nothing, the trail included"
    assert trail(env) == []

    code, out = run(env, "outbox", "retry", "--all-exhausted", CHANCEPAY_OPERATOR="alice", **MAX_ATTEMPTS)
    assert code == 0 and out == [{"retried": 2}]
    (row,) = trail(env)
    assert row["who"] == "alice" and row["command"] == "outbox retry" and row["result"] == "ok"
    assert row["arguments"] == {"uuids": [], "all_exhausted": True} and row["detail"] == {"retried": 2}
    assert row["outcomes"] == {u: "retried" for u in items_uuids(items)}, "what it moved is what the dry run showed"
    assert sorted(row["uuids"]) == sorted(stuck)
    assert env.orch_sql("SELECT MAX(attempts) FROM outbox") == [(0,)]

    # A failure is recorded too (result error): one uuid with no outbox row, one still in rotation.
    missing = "9b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    code, out = run(env, "outbox", "retry", fresh, missing, **MAX_ATTEMPTS)
    assert code == 1 and out == [{"retried": 0, "not_in_outbox": [missing]}]
    rows = trail(env)
    assert len(rows) == 2 and rows[1]["result"] == "error" and rows[1]["who"] == getpass.getuser()
    assert rows[1]["outcomes"] == {fresh: "not_exhausted", missing: "not_in_outbox"}
    assert rows[1]["arguments"] == {"uuids": [fresh, missing], "all_exhausted": False}

    # Bad input is refused before anything is done, and so not recorded.
    assert run(env, "outbox", "retry", "not-a-uuid", **MAX_ATTEMPTS)[0] == 1
    assert len(trail(env)) == 2

    code, (story,) = run(env, "trace", stuck[0])
    assert code == 0
    (action,) = story["operator_actions"]
    assert action["command"] == "outbox retry" and action["who"] == "alice" and action["outcome"] == "retried"
    assert action["id"] == row["id"] and action["result"] == "ok" and action["arguments"]["all_exhausted"] is True
    assert "operator actions: outbox retry by alice" in story["story"]
    assert run(env, "trace", fresh)[1][0]["operator_actions"][0]["outcome"] == "not_exhausted"


def items_uuids(items: list[dict]) -> list[str]:
    return [i["uuid"] for i in items]


def _dead_letters_of_every_kind(make_stack, env):
    """A stack (orchestrator, wallet; no scanner) whose wallet has moved three dead letters into its
    table: a pending payment, a payment already final, and a forgery (no payment)."""
    s = make_stack().start("orchestrator", "wallet")
    pending, final = s.pay_many(2, "dead-lettered")  # never published: no scanner
    for i, uuid in enumerate((pending, final)):
        body = json.dumps({"uuid": uuid, "cusId": f"dead-lettered-{i}", "amount": "12.50"}).encode()
        _dead_letter(s, body, uuid, MESSAGE_KEY)
    # Setup, as if the wallet had decided it meanwhile (operators never write this SQL).
    env.orch_sql("UPDATE request SET succeed = 1, finalized_at = NOW(6) WHERE uuid = %s", (final,))
    env.orch_sql("DELETE FROM outbox WHERE uuid = %s", (final,))
    env.orch_sql("DELETE FROM outbox WHERE uuid = %s", (pending,))  # lost, dead-lettered: only replay brings it back
    publish_raw(s, json.dumps({"uuid": FORGED, "cusId": "m", "amount": "1.00"}).encode(), message_id=FORGED, key=None)
    wait_until(
        lambda: dead_letters(env) == 3 and env.queue_depth(topology.DLQ) == 0,
        30,
        what="three dead letters moved into the wallet's table",
    )
    return s, pending, final


def test_dlq_replay_and_purge_are_recorded_and_their_dry_runs_change_nothing(make_stack, env) -> None:
    s, pending, final = _dead_letters_of_every_kind(make_stack, env)
    before = everything(env)

    code, lines = run(env, "dlq", "replay", "--all", "--dry-run")
    items, summary = split(lines)
    assert code == 1, "as the real run: one message is no payment"
    assert summary == {"replayed": 1, "already_final": 1, "not_a_payment": 1, "dry_run": True}
    would = {i["uuid"]: i["would"] for i in items}
    assert would == {pending: "replay", final: "remove", FORGED: "keep"}
    code, lines = run(env, "dlq", "purge", FORGED, "--dry-run")
    items, summary = split(lines)
    assert code == 0 and summary == {"purged": 1, "dry_run": True} and items_uuids(items) == [FORGED]
    assert items[0]["would"] == "purge" and items[0]["position"] == 3
    code, lines = run(env, "dlq", "purge", "nothing-by-this-id", "--dry-run")
    assert code == 1 and lines == [{"purged": 0, "not_in_dlq": ["nothing-by-this-id"], "dry_run": True}]
    assert everything(env) == before, "dry runs change nothing, the trail included"

    code, out = run(env, "dlq", "replay", "--all", CHANCEPAY_OPERATOR="bob")
    assert code == 1 and out == [{"replayed": 1, "already_final": 1, "not_a_payment": 1}]
    (replay,) = trail(env)
    assert replay["who"] == "bob" and replay["command"] == "dlq replay" and replay["result"] == "error"
    assert replay["outcomes"] == {pending: "replayed", final: "already_final", FORGED: "not_a_payment"}
    assert replay["arguments"] == {"ids": [], "all": True, "limit": 10000}
    assert replay["detail"] == out[0]
    # What moved is what the dry run said: the pending one into the outbox, two dead letters gone.
    assert [u for (u,) in env.orch_sql("SELECT uuid FROM outbox")] == [pending]
    assert [u for (u,) in env.wallet_sql("SELECT uuid FROM dead_letter")] == [FORGED]

    # A dead letter with no uuid (an unreadable body) is named in the detail by its id.
    assert _publish_to_dlq(env, b"not json at all")
    wait_until(lambda: dead_letters(env) == 2, 30, what="the unreadable dead letter moved")
    code, lines = run(env, "dlq", "purge", "--all", "--dry-run")
    items, summary = split(lines)
    assert code == 0 and summary == {"purged": 2, "dry_run": True}
    assert [i["uuid"] for i in items] == [FORGED, None]
    code, out = run(env, "dlq", "purge", "--all", CHANCEPAY_OPERATOR="carol")
    assert code == 0 and out == [{"purged": 2}] and dead_letters(env) == 0
    purge = trail(env)[1]
    assert purge["who"] == "carol" and purge["command"] == "dlq purge" and purge["result"] == "ok"
    assert purge["outcomes"] == {FORGED: "purged"} and purge["uuids"] == [FORGED]
    nameless = {"id": items[1]["id"], "message_id": items[1]["message_id"]}
    assert purge["detail"] == {"purged": 2, "without_uuid": [nameless]}

    code, (story,) = run(env, "trace", FORGED)
    assert code == 1 and story["request"] is None  # no payment: but its operator actions are shown
    assert [(a["command"], a["who"], a["outcome"]) for a in story["operator_actions"]] == [
        ("dlq replay", "bob", "not_a_payment"),
        ("dlq purge", "carol", "purged"),
    ]
    assert story["story"].startswith("no payment with this uuid; operator actions: dlq replay by bob")
    s.role("scanner").start().wait_ready()
    s.wait_final([pending], timeout=30)
    code, (story,) = run(env, "trace", pending)
    assert code == 0 and story["operator_actions"][0]["outcome"] == "replayed"
    assert story["request"]["status"] in ("SUCCEEDED", "FAILED") and story["dlq"] == []


def _publish_to_dlq(env, body: bytes) -> bool:
    from tests.integration.test_dead_letters import _publish_to_dlq as publish

    return publish(env, body)


def test_a_command_whose_trail_cannot_be_written_changes_nothing(make_stack, env) -> None:
    """An orchestrator schema without the trail (older than the code): refused before acting."""
    _dead_letters_of_every_kind(make_stack, env)
    env.orch_sql("DROP TABLE operator_action_uuid")
    before = everything(env)
    for args in (("dlq", "purge", "--all"), ("dlq", "replay", "--all"), ("outbox", "retry", "--all-exhausted")):
        result = env.chancepay(*args, timeout=120)
        assert result.returncode == 1 and result.stdout == "", (args, result.stdout)
        assert "run `chancepay migrate`" in result.stderr and "nothing was changed" in result.stderr
    assert everything(env) == before
    # The dry runs read only: they still answer.
    assert run(env, "dlq", "purge", "--all", "--dry-run")[0] == 0


def test_reconcile_records_a_pass_that_repaired_and_not_one_that_found_nothing(make_stack, env) -> None:
    s = make_stack().start("orchestrator", "wallet")
    lost, decided = s.pay_many(2, "reconciled")  # no scanner: both wait in the outbox
    # Setup: one message lost before the wallet; one the wallet decided whose result never came back.
    env.orch_sql("DELETE FROM outbox WHERE uuid IN (%s, %s)", (lost, decided))
    env.wallet_sql(
        "INSERT INTO inbox (uuid, cus_id, amount, succeed, finalized_at) VALUES (%s, 'reconciled-1', 12.50, 1, NOW(6))",
        (decided,),
    )
    result = env.chancepay("reconcile", "--age", "0", timeout=120, CHANCEPAY_OPERATOR="reconcile-cronjob")
    assert result.returncode == 0, result.stdout[-2000:]
    (row,) = trail(env)
    assert row["who"] == "reconcile-cronjob" and row["command"] == "reconcile" and row["result"] == "ok"
    assert row["outcomes"] == {lost: "reenqueued", decided: "finalized_from_inbox"}
    assert row["arguments"] == {"age_seconds": 0.0}
    assert row["detail"]["reenqueued"] == 1 and row["detail"]["finalized_from_inbox"] == 1
    logged = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any(line["event"] == "operator action recorded" and line["id"] == row["id"] for line in logged)

    # The next pass finds the lost one in the outbox again and changes nothing: no row.
    again = env.chancepay("reconcile", "--age", "0", timeout=120)
    assert again.returncode == 0 and len(trail(env)) == 1
    code, (story,) = run(env, "trace", decided)
    assert code == 0 and story["request"]["status"] == "SUCCEEDED"
    assert [(a["command"], a["outcome"]) for a in story["operator_actions"]] == [("reconcile", "finalized_from_inbox")]


def _docs_blocks(kind: str) -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Operator trail\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


def test_the_docs_operator_trail_commands_run_as_written(make_stack, env) -> None:
    """docs/operations.md "Operator trail": its shell lines in a shell with `chancepay` on PATH and
    this test's databases (the `<uuid>` put in), its SQL as the orchestrator's user."""
    s = make_stack().start("orchestrator", "wallet")
    (uuid,) = s.pay_many(1, "documented")
    body = json.dumps({"uuid": uuid, "cusId": "documented-0", "amount": "12.50"}).encode()
    _dead_letter(s, body, uuid, MESSAGE_KEY)
    wait_until(lambda: dead_letters(env) == 1, 30, what="the dead letter moved")
    (shell,) = _docs_blocks("sh")
    lines = [line for line in shell.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) >= 3, lines
    environ = env.environ(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    outputs = []
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line.replace("<uuid>", uuid)], env=environ, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr[-2000:])
        outputs.append([json.loads(out) for out in done.stdout.splitlines() if out.startswith("{")])
    dry, real, traced = outputs[:3]
    assert dry[-1] == {"purged": 1, "dry_run": True} and dry[0]["uuid"] == uuid
    assert real == [{"purged": 1}] and dead_letters(env) == 0
    assert [(a["command"], a["who"]) for a in traced[0]["operator_actions"]] == [("dlq purge", "alice")]
    (query,) = _docs_blocks("sql")
    rows = env.orch_sql(query)
    assert [r[2] for r in rows] == ["dlq purge"] and rows[0][1] == "alice"
