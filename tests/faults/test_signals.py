"""SIGSTOP for longer than the roles' timeouts, then SIGCONT; SIGTERM to each role during load."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.support.env import env_count, wait_until
from tests.support.invariants import assert_converged
from tests.support.payer import Payer

PAUSE_SECONDS = 10
SHORT = {
    "CHANCEPAY_SCANNER_LEASE_SECONDS": "2",
    "CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS": "2",
    "CHANCEPAY_SCANNER_RETRY_BASE_SECONDS": "0.2",
    "CHANCEPAY_DB_TIMEOUT_SECONDS": "2",
    "CHANCEPAY_CALLBACK_TIMEOUT_SECONDS": "1",
    "CHANCEPAY_CALLBACK_BACKOFF_SECONDS": "0.05",
}


@pytest.mark.parametrize("name", ["orchestrator", "scanner", "wallet"])
def test_role_paused_with_sigstop_then_resumed_converges(make_stack, env, name: str) -> None:
    s = make_stack(**SHORT).start()
    role = s.roles[name]
    with Payer(s, rate=4, timeout=30, prefix=f"stop-{name}") as payer:
        wait_until(lambda: len(payer.accepted) >= 4, 10, what="payments flowing")
        role.signal(signal.SIGSTOP)
        try:
            paused_at = time.monotonic()
            wait_until(lambda: time.monotonic() - paused_at >= PAUSE_SECONDS, PAUSE_SECONDS + 5, interval=0.5,
                       what="pause")
        finally:
            role.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        wait_until(lambda: any(r["started"] > resumed_at + 1 and r.get("status") == 202 for r in payer.snapshot()),
                   30, what="payments accepted after the resume")
    results = payer.snapshot()
    assert all(r.get("status") == 202 for r in results), [r for r in results if r.get("status") != 202][:3]
    assert role.running, "the role survives the pause"
    role.wait_ready(timeout=30)
    assert_converged(s, payer.accepted, timeout=90)


def _load(env, rate: float, duration: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chancepay", "load", "--rate", str(rate), "--duration", str(duration),
         "--converge-timeout", "90"],
        env=env.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("name", ["orchestrator", "scanner", "wallet"])
def test_sigterm_during_load_clean_exit_restart_converges(make_stack, env, name: str) -> None:
    s = make_stack(**SHORT).start()
    load = _load(env, rate=20, duration=12)
    try:
        wait_until(lambda: env_count(env, "SELECT COUNT(*) FROM request") >= 60, 20, what="load under way")
        role = s.roles[name]
        t0 = time.monotonic()
        code = role.stop(timeout=25)
        took = time.monotonic() - t0
        assert code == 0, "\n".join(role.raw[-20:])
        assert took < 25
        assert role.events("stopping: draining in-flight work")
        assert not role.events("[FAILED TO STOP CLEANLY]")
        role.start().wait_ready()
        out, err = load.communicate(timeout=200)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, out + err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["converged"] and summary["invariants"]["ok"], summary
    if name == "orchestrator":
        # while the API restarts, new connections are refused; every answer it gave is a 202
        assert set(summary["responses"]) <= {"202", "connect_error", "disconnected"}, summary
        assert summary["accepted"] >= summary["sent"] * 0.5, summary
    else:
        assert summary["accepted"] == summary["sent"] == 240, summary
    assert_converged(s)
