"""Fixtures shared by the tiers that talk to live servers (integration, faults, chart, soak, and the
deploy checks that run roles): tests/support env, roles, faults, payer, invariants.

Nothing here starts or reaches a server by itself: `servers` is applied (autouse) by the conftest
of each tier that needs it (tests/integration, tests/faults, tests/chart, tests/soak), and any
test asking for `env`/`stack` gets it through `env_factory`. tests/unit never does: it runs with
no server, and its conftest fails any socket connect."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.support import servers as servers_mod
from tests.support.env import VHOSTS, Env
from tests.support.roles import Stack


@pytest.fixture(scope="session")
def servers() -> Iterator[servers_mod.Servers]:
    """The database and broker pair of this run (CHANCEPAY_TEST_SERVERS: debian12 or chart), up for
    the whole session; the vhosts the tests pooled are deleted at the end."""
    with servers_mod.session_servers() as s:
        try:
            yield s
        finally:
            VHOSTS.close(s)


def pytest_report_header(config: pytest.Config) -> str:
    which = os.environ.get(servers_mod.SERVERS_VAR, "debian12")
    return f"chancepay servers: {servers_mod.SERVERS_VAR}={which}"


@pytest.fixture
def env_factory(tmp_path, servers) -> Iterator[Callable[..., Env]]:
    """Make the test's Env on this run's servers: `env_factory(migrate=False)` leaves the databases
    and users to the test. Removed afterwards."""
    made: list[Env] = []

    def factory(*, migrate: bool = True) -> Env:
        if made:  # one Env per test: later callers (make_stack) get the one the test made
            return made[0]
        e = Env(tmp_path)
        made.append(e)
        e.create(migrate=migrate)
        return e

    yield factory
    for e in made:
        e.destroy()


@pytest.fixture
def env(env_factory) -> Env:
    """Fresh databases, users and RabbitMQ vhost for one test; removed afterwards."""
    return env_factory()


@pytest.fixture
def make_stack(env_factory) -> Iterator[Callable[..., Stack]]:
    """Build a Stack with extra CHANCEPAY_* settings (on the test's Env, made now if the test did
    not ask for one); every process it started is stopped at teardown."""
    stacks: list[Stack] = []

    def factory(**overrides: str) -> Stack:
        s = Stack(env_factory(), **overrides)
        stacks.append(s)
        return s

    yield factory
    for s in stacks:
        s.stop_all()


@pytest.fixture
def stack(make_stack) -> Stack:
    """The three roles, running and ready."""
    return make_stack().start()
