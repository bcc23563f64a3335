"""tests/unit: the product's own code, with no server.

Every test here runs under a socket guard: a connect of any socket (INET, INET6, and unix, the
way MariaDB's admin socket is reached) through `socket.socket.connect`/`connect_ex` (so asyncio's
`open_connection`/`create_connection`, httpx, aiormq, asyncmy and PyMySQL too) raises
`NetworkInUnitTest`, and the test fails at teardown even if the code under test caught the
error (retry loops do). The guard covers the standard event loop, not uvloop's (which connects in
C): unit tests use `asyncio.run`. The `servers` fixture (tests/conftest.py) is refused here too.

A test that needs a server belongs to tests/integration or tests/faults; a pure one takes a fake
(tests/support/fakes.py, tests/support/recording_log.py). tests/unit/test_socket_guard.py proves
the guard catches what it should.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

HINT = (
    "tests/unit runs with no server: move a test that needs one to tests/integration or tests/faults, "
    "or give the code a fake (tests/support/fakes.py)"
)


class NetworkInUnitTest(RuntimeError):
    """Not an OSError on purpose: code that retries on OSError must not take it for an outage."""


class SocketGuard:
    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refuse(self, sock: socket.socket, address: Any) -> NetworkInUnitTest:
        family = getattr(sock.family, "name", str(sock.family))
        what = f"{family} connect to {address!r}"
        self.attempts.append(what)
        # Closed here: callers close a socket whose connect failed only on OSError, which this is not.
        sock.close()
        return NetworkInUnitTest(f"{what} refused. {HINT}")

    def check(self) -> None:
        if self.attempts:
            attempts, self.attempts = self.attempts, []
            pytest.fail(f"this unit test tried to reach the network ({'; '.join(attempts)}). {HINT}", pytrace=False)


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[SocketGuard]:
    guard = SocketGuard()

    def connect(self: socket.socket, address: Any) -> None:
        raise guard.refuse(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        raise guard.refuse(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield guard
    monkeypatch.undo()
    guard.check()


@pytest.fixture(scope="session")
def servers() -> None:
    """Overrides tests/conftest.py's: no unit test may ask for the live servers (nor env/stack)."""
    pytest.fail(f"a unit test asked for the live servers. {HINT}", pytrace=False)
