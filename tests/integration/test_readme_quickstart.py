"""The README's first screen, run as written: `make run` in one terminal; in a second one, with no
CHANCEPAY_* variable, every command of "In a second terminal" exactly as the README prints it
(the uuid from the first answer put in for `<uuid>`); Ctrl-C; then `make reset`. The next drift
between the README and the code fails here instead of with a newcomer.

It uses what a newcomer's machine has: this machine's MariaDB and RabbitMQ, the repository's own
`.venv` (made by `make run`), ports 8000-8002, the default databases. `make reset` runs only when
the test made those databases (it drops every payment in them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx

from tests.integration.test_second_shell import DEFAULT_DATABASES, DEFAULT_PORTS, bare_environ, port_free
from tests.support import servers as servers_mod
from tests.support.env import wait_until
from tests.support.servers import one_pass

ROOT = Path(__file__).resolve().parents[2]
pytestmark = one_pass(
    "debian12",
    "the README's commands use this machine's own MariaDB and RabbitMQ on their "
    "default ports: the debian12 pass runs it",
)


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under `heading`, continuation lines joined, comment
    lines (output shown to the reader) left out."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block, f"no sh block under '## {heading}'"
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def existing_databases() -> set[str]:
    with servers_mod.current().admin_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, %s)", DEFAULT_DATABASES
        )
        return {row[0] for row in cur.fetchall()}


def test_the_readme_quickstart_runs_as_written(tmp_path) -> None:
    assert readme_block("The two commands")[0].startswith("make run")
    commands = readme_block("In a second terminal")
    assert len(commands) >= 6, commands
    wait_until(
        lambda: all(port_free(p) for p in DEFAULT_PORTS.values()),
        60,
        interval=0.5,
        what="ports 8000-8002 free for make run",
    )
    made_here = not existing_databases()
    shell = bare_environ()
    for var in ("VENV", "ORCHESTRATOR_PORT", "SCANNER_PORT", "WALLET_PORT"):
        shell.pop(var, None)
    log_path = tmp_path / "make-run.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["bash", "-c", "make run"], cwd=ROOT, env=shell, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"make run exited {proc.returncode}:\n{output()}")
        try:
            return all(
                httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200 for p in DEFAULT_PORTS.values()
            )
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 300, interval=1, what="make run's three roles ready on 8000-8002")
        uuid = None
        for command in commands:
            if "<uuid>" in command:
                assert uuid, f"no uuid yet for: {command}"
                command = command.replace("<uuid>", uuid)
            done = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=240
            )
            assert done.returncode == 0, (command, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
            if uuid is None and "POST" in command:
                found = re.search(r'"uuid":"([0-9a-f-]{36})"', done.stdout)
                assert found and "202" in done.stdout.splitlines()[0], done.stdout
                uuid = found.group(1)
        assert uuid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the make run terminal
        code = proc.wait(timeout=60)
        log.close()
    assert code in (0, 130, -signal.SIGINT, 2), (code, output())
    for port in DEFAULT_PORTS.values():
        wait_until(lambda port=port: port_free(port), 30, what=f"port {port} free after Ctrl-C")
    if made_here:
        reset = subprocess.run(
            ["bash", "-c", "make reset"], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=120
        )
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert not existing_databases(), "make reset left a database"
