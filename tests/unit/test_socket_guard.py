"""The unit tier's socket guard (tests/unit/conftest.py) catches every way a unit test could reach a
server: a plain connect, connect_ex, asyncio's connections, a unix socket; and a test that swallows
the error still fails."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import HINT, NetworkInUnitTest, SocketGuard

ROOT = Path(__file__).resolve().parents[2]


def test_a_tcp_connect_is_refused_with_the_hint(socket_guard: SocketGuard) -> None:
    with pytest.raises(NetworkInUnitTest, match="tests/unit runs with no server") as refused:
        socket.create_connection(("127.0.0.1", 3306), timeout=1)
    assert "AF_INET connect to ('127.0.0.1', 3306)" in str(refused.value)
    with pytest.raises(pytest.fail.Exception, match="tried to reach the network"):
        socket_guard.check()  # what the teardown does: the test fails even if the code caught it


def test_connect_ex_ipv6_and_unix_sockets_are_refused(socket_guard: SocketGuard, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkInUnitTest):
        s.connect_ex(("127.0.0.1", 5672))
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(NetworkInUnitTest):
            s.connect(("::1", 5672))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(NetworkInUnitTest):
        s.connect(str(tmp_path / "mysqld.sock"))
    assert len(socket_guard.attempts) == 3 if socket.has_ipv6 else 2
    socket_guard.attempts.clear()  # expected here: this test is the guard's own


def test_asyncio_connections_are_refused(socket_guard: SocketGuard) -> None:
    async def reach_the_broker() -> None:
        await asyncio.open_connection("127.0.0.1", 5672)

    with pytest.raises(NetworkInUnitTest):
        asyncio.run(reach_the_broker())
    assert socket_guard.attempts == ["AF_INET connect to ('127.0.0.1', 5672)"]
    socket_guard.attempts.clear()


def test_the_event_loop_itself_still_works() -> None:
    """asyncio's self-pipe is a socketpair (no connect): pure async code runs under the guard."""

    async def pure() -> int:
        await asyncio.sleep(0)
        return 1

    assert asyncio.run(pure()) == 1


PLANTED = """
import socket


def test_swallows_the_refusal():
    try:
        socket.create_connection(("127.0.0.1", 3306), timeout=1)
    except Exception:
        pass  # a retry loop would do this


def test_asks_for_the_servers(servers):
    pass
"""


def test_a_test_that_swallows_the_refusal_still_fails(tmp_path: Path) -> None:
    """Run as pytest runs it: the guard as a plugin on a planted test file."""
    (tmp_path / "test_planted.py").write_text(PLANTED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.unit.conftest",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_planted.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 errors" in out, out  # the first at its teardown (the guard's check), the second at setup
    assert "tried to reach the network (AF_INET connect to ('127.0.0.1', 3306))" in out, out
    assert "a unit test asked for the live servers" in out and HINT in out, out
