"""Exit codes tell the truth (issue 20, CONTRACT "Processes"): `load` against a dead API fails in
seconds and before sending anything; an operator command that could not do what was asked exits
non-zero; usage errors exit 2 with argparse's usage line; `migrate` without admin rights says so in
one line and exits 2 at once, while a database that does not answer yet is still waited for; a
configuration error is a tagged JSON line; the port-in-use hint names the knob that works under the
command that was run."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time

import pytest

from tests.support.env import free_port


def run(env, *args: str, timeout: float = 60, **environ: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "chancepay", *args],
        env=env.environ(**environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def errors(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [line for line in lines(result.stdout + "\n" + result.stderr) if line.get("level") == "error"]


def test_load_against_a_closed_port_fails_within_5_seconds(env) -> None:
    port = free_port()  # nothing listens there
    for how in ({"CHANCEPAY_ORCHESTRATOR_URL": f"http://127.0.0.1:{port}"}, {}):
        args = ("load", "--rate", "10", "--duration", "5") + (() if how else ("--target", f"http://127.0.0.1:{port}"))
        result, elapsed = run(env, *args, **how)
        assert result.returncode != 0 and elapsed < 5, (result.returncode, elapsed, result.stderr[-2000:])
        assert result.stdout == "", "no summary: nothing was sent"
        (line,) = errors(result)
        assert line["event"] == "[FAILED TO START]" and line["url"] == f"http://127.0.0.1:{port}"
        assert "Connect" in line["answer"] and "make run" in line["hint"]
        assert "Traceback" not in result.stderr


def test_outbox_retry_of_an_unknown_uuid_exits_non_zero(env) -> None:
    unknown = "7c1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    result, _ = run(env, "outbox", "retry", unknown)
    assert result.returncode == 1, result.stderr[-2000:]
    assert lines(result.stdout) == [{"retried": 0, "not_in_outbox": [unknown]}]
    assert errors(result)[0]["event"] == "[FAILED TO OPERATE]"
    nothing, _ = run(env, "outbox", "retry", "--all-exhausted")
    assert nothing.returncode == 0 and lines(nothing.stdout) == [{"retried": 0}], "nothing to do is not a failure"


@pytest.mark.parametrize(
    "args",
    [
        ("load", "--rate", "0", "--duration", "5"),
        ("load", "--rate", "10", "--duration", "-1"),
        ("load", "--rate", "ten", "--duration", "5"),
        ("load", "--rate", "10", "--duration", "5", "--concurrency", "0"),
        ("no-such-command",),
        ("outbox", "retry"),
        ("dev", "--ports", "walet=1"),
        ("dev", "--ports", "orchestrator=70000"),
        ("dev", "--roles", "orchestrator,walet"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_line(env, args) -> None:
    result, elapsed = run(env, *args)
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-1000:])
    assert result.stderr.startswith("usage: chancepay") and "error:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "[FAILED TO START]" not in result.stdout + result.stderr
    assert "supervisor started role" not in result.stdout, "refused before anything started"
    assert elapsed < 10


def test_migrate_without_admin_rights_says_so_and_exits_2_at_once(env) -> None:
    password = secrets.token_hex(8)
    nobody = f"mysql://cp_nobody_{env.id}:{password}@127.0.0.1:{env.mysql_port}/cp_missing_{env.id}"
    result, elapsed = run(
        env, "migrate", CHANCEPAY_ADMIN_DB="", CHANCEPAY_ORCHESTRATOR_DB=nobody, CHANCEPAY_MIGRATE_WAIT_SECONDS="120"
    )
    assert result.returncode == 2 and elapsed < 10, (result.returncode, elapsed, result.stdout[-2000:])
    (line,) = errors(result)
    assert line["event"] == "[FAILED TO REACH DATABASE]" and line["variable"] == "CHANCEPAY_ORCHESTRATOR_DB"
    assert line["url"].startswith(f"mysql://cp_nobody_{env.id}:***@") and "Access denied" in line["answer"]
    assert "CHANCEPAY_ADMIN_DB" in line["hint"] and "waiting" not in line
    assert password not in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr

    # An admin URL the server refuses: the same, at once.
    refused = f"mysql://cp_nobody_{env.id}:{password}@127.0.0.1:{env.mysql_port}/"
    result, elapsed = run(env, "migrate", CHANCEPAY_ADMIN_DB=refused, CHANCEPAY_MIGRATE_WAIT_SECONDS="120")
    assert result.returncode == 2 and elapsed < 10, (result.returncode, elapsed, result.stdout[-2000:])
    (line,) = errors(result)
    assert line["variable"] == "CHANCEPAY_ADMIN_DB" and password not in result.stdout


def test_migrate_still_waits_for_a_database_that_does_not_answer(env) -> None:
    closed = free_port()
    url = f"mysql://someone:pw@127.0.0.1:{closed}/somedb"
    result, elapsed = run(
        env, "migrate", CHANCEPAY_ADMIN_DB="", CHANCEPAY_ORCHESTRATOR_DB=url, CHANCEPAY_MIGRATE_WAIT_SECONDS="4"
    )
    assert result.returncode == 1 and elapsed >= 2, (result.returncode, elapsed, result.stdout[-2000:])
    failures = errors(result)
    assert failures[0].get("waiting") is True and failures[-1].get("gave_up") is True, failures
    assert "Traceback" not in result.stdout + result.stderr


def test_a_configuration_error_is_a_tagged_json_line(env) -> None:
    for command in (("migrate",), ("dev",), ("audit",)):
        result, _ = run(env, *command, CHANCEPAY_WALLET_SUCCESS_RATE="half")
        assert result.returncode == 2
        (line,) = errors(result)
        assert line["event"] == "[FAILED TO START]" and "CHANCEPAY_WALLET_SUCCESS_RATE" in line["error"]
        assert line["role"] == command[0]
        assert not [x for x in (result.stdout + result.stderr).splitlines() if x.strip() and not x.startswith("{")]


def test_the_port_in_use_hint_names_the_knob_of_the_command_run(env) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        for extra, knob in (
            (("--via-make",), "make run ORCHESTRATOR_PORT="),
            ((), "chancepay dev --ports orchestrator="),
        ):
            result, _ = run(env, "dev", *extra, "--roles", "orchestrator", "--ports", f"orchestrator={port}")
            assert result.returncode == 2, result.stdout[-2000:]
            (line,) = [x for x in lines(result.stdout) if x.get("event") == "[FAILED TO START HTTP SERVER]"]
            assert knob in line["hint"] and "CHANCEPAY_PORT" not in line["hint"], line
            assert line["host"] == "127.0.0.1", "chancepay dev binds the loopback unless told otherwise"
        alone, _ = run(env, "orchestrator", CHANCEPAY_PORT=str(port))
        (line,) = [x for x in lines(alone.stdout) if x.get("event") == "[FAILED TO START HTTP SERVER]"]
        assert "CHANCEPAY_PORT=" in line["hint"], "a role run alone is moved by CHANCEPAY_PORT"
    finally:
        holder.close()


@pytest.mark.parametrize("args", [("audit",), ("outbox", "list"), ("trace", "7c1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")])
def test_an_operator_command_refused_by_its_database_says_so_in_seconds(env, args) -> None:
    """A shell whose URL is not the one provisioned (the issue: a second shell falling back to
    another user): one tagged line with the URL tried, the server's answer and what to do."""
    password = secrets.token_hex(8)
    wrong = f"mysql://{env.orch_user}:{password}@127.0.0.1:{env.mysql_port}/{env.orch_db}"
    result, elapsed = run(env, *args, CHANCEPAY_ORCHESTRATOR_DB=wrong)
    assert result.returncode == 1 and elapsed < 10, (result.returncode, elapsed, result.stderr[-2000:])
    (line,) = errors(result)
    assert line["event"] == "[FAILED TO REACH DATABASE]" and line["variable"] == "CHANCEPAY_ORCHESTRATOR_DB"
    assert line["url"] == f"mysql://{env.orch_user}:***@127.0.0.1:{env.mysql_port}/{env.orch_db}"
    assert "Access denied" in line["answer"] and "make run" in line["hint"]
    assert password not in result.stdout + result.stderr and "Traceback" not in result.stderr
