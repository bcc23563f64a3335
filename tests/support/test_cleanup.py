"""tests/support/cleanup.py: a dead run's leftovers are recognised by the pid in their name."""

from __future__ import annotations

import os

from tests.support.cleanup import stale


def test_leftovers_are_recognised_by_the_pid_in_their_name() -> None:
    dead = 2**22 + 12345  # above pid_max on Linux: never a live process
    assert stale(f"cpt_{dead}_ab12cd_orch") and stale(f"cptest-{dead}-abc123-mariadb")
    assert stale(f"cpp-{dead}-ab12-orchestrator-0") and stale(f"cpplay-cpp-{dead}-ab12-mariadb-0")
    assert not stale(f"cpt_{os.getpid()}_ab12cd_orch"), "a live run's objects are kept"
    assert not stale("chancepay_orchestrator") and not stale("cpt_legacy")
