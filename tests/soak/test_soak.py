"""A seeded random mix of faults during `chancepay load`, bounded in time (opt-in: `make soak`).

CHANCEPAY_SOAK_SEED=<n> replays a run; CHANCEPAY_SOAK_SECONDS (default 90) bounds the load.
The seed is printed first and repeated in every failure message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from chancepay.core import topology
from tests.support.env import delete_queue, run_reconcile, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.faults import CallbackStub, seeded_random
from tests.support.invariants import assert_converged
from tests.support.roles import Supervisor

FAULTS = (
    "amqp_refuse",
    "amqp_blackhole",
    "db_refuse",
    "db_blackhole",
    "callback_500",
    "sigstop",
    "sigterm",
    "sigkill",
    "delete_queue",
)


@pytest.mark.timeout(900)
def test_random_fault_mix_during_load(make_stack, env) -> None:
    seed, rng = seeded_random()
    seconds = float(os.environ.get("CHANCEPAY_SOAK_SECONDS") or 90)
    print(f"\nSOAK SEED={seed} (replay: CHANCEPAY_SOAK_SEED={seed}) duration={seconds}s", flush=True)
    callback_down = [False]

    def behaviour(path: str, n: int) -> tuple:
        return ("status", 500) if callback_down[0] else ("forward",)

    amqp = FaultProxy("127.0.0.1", 5672).start()
    db = FaultProxy("127.0.0.1", 3306).start()
    stub = CallbackStub(env.base_url("orchestrator"), behaviour).__enter__()
    journal: list[str] = []
    load = None
    s = None
    try:
        s = make_stack(
            CHANCEPAY_ORCHESTRATOR_DB=env.orch_url(port=db.port),
            CHANCEPAY_WALLET_DB=env.wallet_url(port=db.port),
            CHANCEPAY_DB_TIMEOUT_SECONDS="2",
            CHANCEPAY_SCANNER_LEASE_SECONDS="3",
            CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS="2",
            CHANCEPAY_SCANNER_RETRY_BASE_SECONDS="0.2",
            CHANCEPAY_SCANNER_RETRY_MAX_SECONDS="2",
            CHANCEPAY_CALLBACK_TIMEOUT_SECONDS="1",
            CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05",
        )
        s.role("orchestrator").start()
        s.role("scanner", CHANCEPAY_AMQP_URL=env.amqp_url(port=amqp.port)).start()
        s.role("wallet", CHANCEPAY_AMQP_URL=env.amqp_url(port=amqp.port), CHANCEPAY_ORCHESTRATOR_URL=stub.url).start()
        for r in s.roles.values():
            r.wait_ready()
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chancepay",
                "load",
                "--rate",
                "10",
                "--duration",
                str(seconds),
                "--converge-timeout",
                "240",
            ],
            env=env.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        with Supervisor(s, "orchestrator", "scanner", "wallet") as sup:
            while time.monotonic() - started < seconds - 10:
                fault = rng.choice(FAULTS)
                victim = rng.choice(("orchestrator", "scanner", "wallet"))
                hold = rng.uniform(2, 10)
                journal.append(
                    f"{time.monotonic() - started:6.1f}s {fault} {victim if 'sig' in fault else ''} {hold:.1f}s"
                )
                print("SOAK", journal[-1], flush=True)
                role = s.roles[victim]
                if fault.startswith("amqp_"):
                    amqp.set_mode(fault.split("_")[1])
                elif fault.startswith("db_"):
                    db.set_mode(fault.split("_")[1])
                elif fault == "callback_500":
                    callback_down[0] = True
                elif fault == "sigstop" and role.running:
                    role.signal(signal.SIGSTOP)
                elif fault == "sigterm" and role.running:
                    role.signal(signal.SIGTERM)
                elif fault == "sigkill" and role.running:
                    role.signal(signal.SIGKILL)
                elif fault == "delete_queue":
                    try:
                        delete_queue(env, topology.QUEUE)
                    except Exception as exc:
                        journal.append(f"  delete_queue failed: {exc!r}")
                time.sleep(hold)  # the deliberate duration of this fault
                amqp.set_mode("pass")
                db.set_mode("pass")
                callback_down[0] = False
                if fault == "sigstop" and role.running:
                    role.signal(signal.SIGCONT)
                time.sleep(rng.uniform(1, 5))
            # Faults over. Heal like production would: roles restarted, the reconciler as a CronJob.
            for name in ("orchestrator", "scanner", "wallet"):
                wait_until(lambda name=name: s.roles[name].running, 60, what=f"{name} running (seed {seed})")
            while load.poll() is None:
                code, summary = run_reconcile(env, age=10)
                journal.append(f"reconcile: {summary}")
                try:
                    load.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        out, err = load.communicate(timeout=60)
        print("SOAK load:", out.strip().splitlines()[-1] if out.strip() else err[-2000:], flush=True)
        print("SOAK restarts:", sup.restarts, "exits:", sup.exits, flush=True)
        context = f"seed {seed}; journal:\n" + "\n".join(journal)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["converged"] and summary["invariants"]["ok"], f"{context}\n{summary}"
        # load exits 0 only when every payment was accepted too (CONTRACT); the faults refuse some
        assert load.returncode == (0 if summary["ok"] else 1), f"{context}\n{out}\n{err[-3000:]}"
        for r in s.roles.values():
            r.wait_ready(timeout=60)
        code, final = run_reconcile(env, age=0)
        assert code == 0, f"{context}\n{final}"
        assert_converged(s, timeout=120)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate()  # reaps it and closes its pipes
        for r in list(s.roles.values()) if s is not None else []:
            if r.running:
                r.signal(signal.SIGCONT)
        stub.__exit__(None, None, None)
        amqp.stop()
        db.stop()
