"""tests/faults talks to the live MariaDB and RabbitMQ of this run (CHANCEPAY_TEST_SERVERS)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _servers_up(servers) -> None:
    """The pair is up (and swept of leftovers) before the first test of this tier."""
