"""Fixtures shared by the integration, fault and deploy tests (see tests/support/stack.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.stack import Env, Stack


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    """Fresh databases, users and RabbitMQ vhost for one test; removed afterwards."""
    e = Env(tmp_path)
    e.create()
    try:
        yield e
    finally:
        e.destroy()


@pytest.fixture
def make_stack(env: Env) -> Iterator[Callable[..., Stack]]:
    """Build a Stack with extra CHANCEPAY_* settings; every process it started is stopped at teardown."""
    stacks: list[Stack] = []

    def factory(**overrides: str) -> Stack:
        s = Stack(env, **overrides)
        stacks.append(s)
        return s

    yield factory
    for s in stacks:
        s.stop_all()


@pytest.fixture
def stack(make_stack) -> Stack:
    """The three roles, running and ready."""
    return make_stack().start()
