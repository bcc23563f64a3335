"""The soak run is opt-in (`make soak`): collected with the rest of tests/ but skipped unless
CHANCEPAY_SOAK=1, so `make test` never runs it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _servers_up(servers) -> None:
    """This tier talks to the live MariaDB and RabbitMQ of this run (CHANCEPAY_TEST_SERVERS)."""


def pytest_collection_modifyitems(config, items) -> None:
    if os.environ.get("CHANCEPAY_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak run: set CHANCEPAY_SOAK=1 (make soak)")
    for item in items:
        if "tests/soak/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
