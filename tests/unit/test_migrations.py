"""The migrations' declarations and the pure policy of a schema newer than the code (a release
rolled back onto a newer one's schema): core/migrations.py `pending` and `runs_on`."""

from __future__ import annotations

import pytest

from chancepay.core import migrations
from chancepay.core.migrations import FLOOR_SINCE, SchemaTooNew, pending, runs_on

SCHEMAS = {"orchestrator": migrations.ORCHESTRATOR, "wallet": migrations.WALLET}


@pytest.mark.parametrize("name", SCHEMAS)
def test_declarations(name: str) -> None:
    steps = SCHEMAS[name]
    assert [m.version for m in steps] == list(range(1, len(steps) + 1))
    assert steps[FLOOR_SINCE - 1].unless_column == ("schema_version", "oldest_code")
    for m in steps:
        # A contraction names earlier code than itself, and only once the column exists to say so.
        assert 0 <= m.oldest_code < m.version, m
        assert m.oldest_code == 0 or m.version > FLOOR_SINCE, m


def test_pending_up_to_the_code() -> None:
    steps = migrations.WALLET
    assert [m.version for m in pending(0, steps)] == [m.version for m in steps]
    assert [m.version for m in pending(2, steps)] == [m.version for m in steps][2:]
    assert pending(len(steps), steps) == []


def test_a_newer_schema_that_only_grew_needs_nothing_from_this_code() -> None:
    steps = migrations.WALLET
    mine = migrations.latest(steps)
    assert pending(mine + 2, steps, newer_floor=0) == []
    assert pending(mine + 2, steps, newer_floor=mine) == []  # contracted, but not past this code


@pytest.mark.parametrize(
    "floor, says",
    [(None, "does not say which earlier release"), (1, "needs code that knows version")],
)
def test_a_newer_schema_contracted_past_this_code_or_silent_is_refused(floor: int | None, says: str) -> None:
    steps = migrations.WALLET
    mine = migrations.latest(steps)
    with pytest.raises(SchemaTooNew, match=says) as refused:
        pending(mine + 1, steps, newer_floor=None if floor is None else mine + floor)
    assert f"newer than this code knows ({mine})" in str(refused.value)


def test_runs_on() -> None:
    assert runs_on(5, 5, 0)
    assert not runs_on(5, 4, 0), "older than the code needs: migrate first"
    assert runs_on(5, 7, 0) and runs_on(5, 7, 5), "newer, expansions (or contractions of older code) only"
    assert not runs_on(5, 7, 6), "newer, contracted past this code"
