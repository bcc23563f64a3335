"""The benchmark's CPU accounting (issue 13): per process, looked up again at the end, never
negative; a process that restarted during the window counts from its new start, one that exited
is reported instead of lowering its group's total."""

from __future__ import annotations

import subprocess
import sys

from bench.run import CpuMeter, process_cpu

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ninput()\n"


def _burner() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, text=True)
    return proc


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill the burner if it still runs, and close its stdin pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdin is not None:
        proc.stdin.close()


def _wait_burnt(proc: subprocess.Popen[str], seconds: float = 0.25) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        read = process_cpu(proc.pid)
        if read is not None and read[1] >= seconds:
            return
        time.sleep(0.02)
    raise AssertionError("the burner did not burn")


def test_a_restarted_process_counts_from_its_new_start_and_nothing_is_negative() -> None:
    first, second = _burner(), None
    group = {"role": [first.pid]}
    try:
        _wait_burnt(first)
        meter = CpuMeter(lambda: {k: list(v) for k, v in group.items()})
        meter.start()
        first.kill()
        first.wait()
        second = _burner()  # the "restarted" role: a new process, maybe even the same pid
        group["role"] = [second.pid]
        _wait_burnt(second)
        used = meter.stop()
        assert 0.25 <= used["role"] < 5, used
        assert meter.exited == {"role": 1}
    finally:
        for p in (first, second):
            if p is not None:
                _reap(p)


def test_a_process_that_exits_lowers_nothing() -> None:
    proc = _burner()
    try:
        _wait_burnt(proc)
        meter = CpuMeter(lambda: {"server": [proc.pid]})
        meter.start()
        proc.kill()
        proc.wait()
        assert meter.stop() == {"server": 0.0}
        assert meter.exited == {"server": 1}
    finally:
        _reap(proc)
