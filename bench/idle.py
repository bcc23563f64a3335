"""CPU of each process at idle and at a low rate (issue 22's "no idle burn").

    python -m bench.idle [--seconds 30] [--rate 10] [--batching-off] [--output FILE]

One deployment (bench.deployment: per-run databases, users and vhost; orchestrator, scanner,
wallet), then two windows of `--seconds` each: nothing sent (idle), and `chancepay load --rate R`.
Each process's CPU is read from /proc/PID/stat (utime + stime) before and after a window
(bench.run.CpuMeter). Reported per process: cores used (CPU seconds per wall second, ms of CPU per
second = cores x 1000) and, at the rate, ms of CPU per payment. `--batching-off` runs the roles with
bench.analysis.BATCHING_OFF (every lever of issue 22 off). MariaDB and RabbitMQ are shared by
whatever else runs on the machine: their figures are upper bounds on a busy one (`machine_other`
says how busy it was).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import analysis
from bench.deployment import Deployment
from bench.output import emit
from bench.raw_limits import _machine_busy
from bench.run import CpuMeter, log, role_pids, run_load, wait_quiet
from chancepay.core import config


def window(env: Deployment, seconds: float, rate: float) -> dict[str, Any]:
    meter = CpuMeter(role_pids(env))
    machine = _machine_busy()
    meter.start()
    began = time.monotonic()
    summary: dict[str, Any] = {}
    if rate:
        summary, _ = run_load(env, rate, seconds, [env.processes["orchestrator"].url])
    else:
        time.sleep(seconds)
    wall = time.monotonic() - began
    used = meter.stop()
    busy = _machine_busy()
    cores = {k: round(v / wall, 4) for k, v in sorted(used.items())}
    out: dict[str, Any] = {"rate": rate, "wall_seconds": round(wall, 1), "cores": cores}
    if machine is not None and busy is not None:
        out["machine_other_cores"] = round(max(0.0, (busy - machine) / wall - sum(cores.values())), 2)
    if rate:
        accepted = summary.get("accepted") or 0
        out["accepted"] = accepted
        out["api_p99_ms"] = (summary.get("api_latency_ms") or {}).get("p99")
        out["e2e_p99_ms"] = (summary.get("e2e_latency_ms") or {}).get("p99")
        if accepted:
            out["ms_per_payment"] = {k: round(v * 1000 / accepted, 3) for k, v in sorted(used.items())}
            out["ms_per_payment_total"] = round(sum(used.values()) * 1000 / accepted, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--batching-off", action="store_true")
    p.add_argument("--output", default="")
    args = p.parse_args(argv)
    overrides = analysis.batching_off({v.env for v in config.VARIABLES})[0] if args.batching_off else {}
    with tempfile.TemporaryDirectory(prefix="chancepay-idle-") as tmp:
        env = Deployment(Path(tmp))
        try:
            env.create()
            for role in ("orchestrator", "scanner", "wallet"):
                env.add(role, **overrides)
            env.start_all()
            wait_quiet()
            log(f"idle for {args.seconds:g} s")
            doc = {"overrides": overrides, "idle": window(env, args.seconds, 0)}
            log(f"{args.rate:g}/s for {args.seconds:g} s")
            doc["low_rate"] = window(env, args.seconds, args.rate)
        finally:
            env.destroy()
    emit(doc, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
