"""SIGSTOP for longer than the roles' timeouts, then SIGCONT; SIGTERM to each role during load."""

from __future__ import annotations

import json
import os
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
            wait_until(
                lambda: time.monotonic() - paused_at >= PAUSE_SECONDS, PAUSE_SECONDS + 5, interval=0.5, what="pause"
            )
        finally:
            role.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        wait_until(
            lambda: any(r["started"] > resumed_at + 1 and r.get("status") == 202 for r in payer.snapshot()),
            30,
            what="payments accepted after the resume",
        )
    results = payer.snapshot()
    assert all(r.get("status") == 202 for r in results), [r for r in results if r.get("status") != 202][:3]
    assert role.running, "the role survives the pause"
    role.wait_ready(timeout=30)
    assert_converged(s, payer.accepted, timeout=90)


def _load(env, rate: float, duration: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chancepay",
            "load",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--converge-timeout",
            "90",
        ],
        env=env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
            load.communicate()  # reaps it and closes its pipes
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["converged"] and summary["invariants"]["ok"], summary
    if name == "orchestrator":
        # while the API restarts, new connections are refused; every answer it gave is a 202
        assert set(summary["responses"]) <= {"202", "connect_error", "disconnected"}, summary
        assert summary["accepted"] >= summary["sent"] * 0.5, summary
        # load exits 0 only when every payment was accepted (CONTRACT): refused ones make it 1
        assert load.returncode == (0 if summary["accepted"] == summary["sent"] else 1), out + err[-3000:]
    else:
        assert load.returncode == 0, out + err[-3000:]
        assert summary["accepted"] == summary["sent"] == 240, summary
    assert_converged(s)


def test_sigterm_is_handled_from_the_first_import_of_the_cli() -> None:
    """In a container the role is PID 1, and the kernel drops a signal sent to PID 1 while it has
    no handler: a SIGTERM during the imports (about half a second, before the runner installs its
    own handler) was lost, and the pod ran on until the grace period's SIGKILL. The CLI module
    installs a plain SIGTERM handler before anything else it imports."""
    code = "import signal, sys; import chancepay.cli; print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True", "importing chancepay.cli leaves SIGTERM at its default (lost when PID 1)"


def _sigterm_bit(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("name", ["orchestrator", "scanner", "wallet"])
def test_sigterm_to_a_role_that_is_pid_1_and_still_starting_stops_it(env, name: str) -> None:
    """Started as PID 1 of a PID namespace of its own (unshare, as a container runtime does) and
    terminated as soon as it catches SIGTERM at all, i.e. while still starting: it exits within
    the contract's 25 s (143 from the early handler, 0 when the runner's handler got it)."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "chancepay", name],
        env=env.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child: list[int] = []

        def catching() -> bool:
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            child[:] = [int(p) for p in out if _sigterm_bit(int(p))]
            return bool(child)

        wait_until(catching, 10, interval=0.002, what="the role (PID 1 of its namespace) catching SIGTERM")
        signal_sent = time.monotonic()
        for pid in child:
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=25)
        assert proc.returncode in (0, 143), (proc.returncode, proc.stderr.read()[-2000:] if proc.stderr else "")
        assert time.monotonic() - signal_sent < 25
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
