"""`make bench`: the pipeline's highest sustained rate, measured against the machine's own limits.

    python -m bench.run [--steps 10,100,200,...] [--step-seconds 15] [--min-payments 600] [--raw-seconds 3]
                        [--scaleout-rate R] [--skip-raw] [--skip-scaleout] [--no-compare] [--output FILE]

1. Physical limits (bench.raw_limits): the API's request+outbox commit straight against MariaDB,
   publish-with-confirm to the same quorum queue, consume+ack from it.
2. Step-up: real roles (bench.deployment: per-run databases, users and vhost), then `chancepay
   load --rate R` at each step, for `--step-seconds` or longer at a low rate, so that every step
   has at least `--min-payments` payments (a p99 of 100 samples is noise). A step is *sustained*
   when every payment was accepted, the run converged with no invariant violation, the backlog
   drained within 5 s of the last arrival, the generator kept up (achieved >= 97 % of R), and
   latency did not explode (API p99 < 1 s, end-to-end p99 < 2 s). Stepping stops at the first
   step that is not. Each step also reports the maximum outbox depth and pending count seen
   while it ran, and CPU seconds per payment for each role, MariaDB, RabbitMQ and the load
   generator itself. Beside it, interleaved rate by rate (each arm's step alone on the servers,
   the order alternating), the same step-up with batching off (every lever of issue 22 off: batch
   sizes 1, the scanner's fixed poll, no nudge; bench/analysis.py), compared with it in
   `batching_comparison`; per step the stages' lags name the limiting stage, and `knee` is the
   highest rate with end-to-end p99 < 100 ms, with the settings it was measured with.
3. Scale-out: two orchestrators, two scanners and two wallets under load: invariants hold and
   the scanners' publish counters add up to exactly the accepted payments (no row published
   twice in normal operation).

Results: one JSON document (stdout and .bench/latest.json) and a short table on stderr.
Everything talks to 127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import analysis
from bench.deployment import Deployment
from bench.output import emit
from bench.stages import StageSampler
from chancepay.core import config

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def process_cpu(pid: int) -> tuple[int, float] | None:
    """(start time in clock ticks since boot, utime + stime + reaped children's) of one process,
    from /proc; None once it is gone. The start time tells a restarted process from the one that
    had its pid before."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]), sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def pids_named(name: str, cmdline_contains: str = "") -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    if cmdline_contains:

        def matches(pid: int) -> bool:
            try:
                return cmdline_contains in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                return False

        pids = [p for p in pids if matches(p)]
    return pids


def server_pids() -> dict[str, list[int]]:
    """The database and broker *servers*: not the short-lived beam.smp of a rabbitmqctl call,
    whose exit during a step once made RabbitMQ's share negative."""
    return {"mariadb": pids_named("mariadbd"), "rabbitmq": pids_named("beam.smp", "rabbit boot")}


class CpuMeter:
    """CPU seconds used between start() and stop() by groups of processes, per process: the pids
    are looked up again at stop(), so a process that started (or restarted) during the window
    counts from its start; one that exited during it cannot be read any more and is reported in
    `exited` instead of silently lowering its group's total. Never negative."""

    def __init__(self, find: Callable[[], dict[str, list[int]]]) -> None:
        self.find = find
        self.before: dict[str, dict[tuple[int, int], float]] = {}
        self.exited: dict[str, int] = {}

    def _read(self) -> dict[str, dict[tuple[int, int], float]]:
        groups: dict[str, dict[tuple[int, int], float]] = {}
        for group, pids in self.find().items():
            found = groups.setdefault(group, {})
            for pid in pids:
                read = process_cpu(pid)
                if read is not None:
                    found[(pid, read[0])] = read[1]
        return groups

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        used: dict[str, float] = {}
        for group in after.keys() | self.before.keys():
            now, then = after.get(group, {}), self.before.get(group, {})
            used[group] = sum(max(0.0, cpu - then.get(key, 0.0)) for key, cpu in now.items())
            gone = len(then.keys() - now.keys())
            if gone:
                self.exited[group] = gone
        return used


def wait_quiet(max_cores: float = 0.15, deadline_s: float = 90.0) -> float:
    """Wait (bounded) until MariaDB and RabbitMQ are idle, so a step does not pay for the previous
    one's background work (InnoDB purge and page flushing after the raw-limit runs, quorum-queue
    log compaction). Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        meter = CpuMeter(server_pids)
        meter.start()
        time.sleep(1.0)
        if sum(meter.stop().values()) < max_cores:
            break
    return round(time.monotonic() - start, 1)


def run_load(env: Deployment, rate: float, seconds: float, targets: list[str]) -> tuple[dict[str, Any], float]:
    """One `chancepay load` subprocess; returns its summary and its own CPU seconds."""
    args = [
        sys.executable,
        "-m",
        "chancepay",
        "load",
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--converge-timeout",
        "60",
    ]
    for url in targets:
        args += ["--target", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(args, env=env.environ(), capture_output=True, text=True, timeout=seconds + 300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        summary = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        summary = {"error": result.stderr[-2000:], "ok": False}
    summary["exit_code"] = result.returncode
    return summary, cpu


def sustained(summary: dict[str, Any], rate: float) -> tuple[bool, str]:
    if summary.get("exit_code") != 0 or not summary.get("ok"):
        return False, "did not converge or violated an invariant"
    if summary["accepted"] != summary["sent"]:
        return False, f"{summary['sent'] - summary['accepted']} payments not accepted"
    if summary["achieved_rate"] < 0.97 * rate:
        return False, f"the generator reached only {summary['achieved_rate']}/s"
    if summary["converge_seconds"] > 5:
        return False, f"backlog took {summary['converge_seconds']} s to drain after the load"
    if (summary["api_latency_ms"]["p99"] or 0) > 1000:
        return False, f"API p99 {summary['api_latency_ms']['p99']} ms"
    if (summary["e2e_latency_ms"]["p99"] or 0) > 2000:
        return False, f"end-to-end p99 {summary['e2e_latency_ms']['p99']} ms"
    return True, "sustained"


def role_pids(deployment: Deployment) -> Callable[[], dict[str, list[int]]]:
    """The deployment's processes as they are *now* (a restarted role has a new pid), by role,
    and the servers."""

    def find() -> dict[str, list[int]]:
        pids: dict[str, list[int]] = {p.role: [] for p in deployment.processes.values()}
        for process in deployment.processes.values():
            if process.proc is not None and process.proc.poll() is None:
                pids[process.role].append(process.proc.pid)
        return {**pids, **server_pids()}

    return find


def measure_step(env: Deployment, rate: float, seconds: float) -> dict[str, Any]:
    """One step of the step-up: `rate` payments/s for `seconds`, with CPU and backlog sampled."""
    meter = CpuMeter(role_pids(env))
    sampler = StageSampler(env)
    meter.start()
    sampler.start()
    began = time.monotonic()
    summary, load_cpu = run_load(env, rate, seconds, [env.processes["orchestrator"].url])
    wall = time.monotonic() - began
    sampler.stop_flag.set()
    sampler.join(timeout=5)
    cpu = meter.stop()
    cpu["load_generator"] = load_cpu
    ok, why = sustained(summary, rate)
    accepted = max(1, summary.get("accepted", 0))
    stages = sampler.summary()
    lags = analysis.stage_lags(sampler.means(), rate, (summary.get("api_latency_ms") or {}).get("p50"))
    return {
        "rate": rate,
        "seconds": seconds,
        "sustained": ok,
        "verdict": why,
        "achieved_rate": summary.get("achieved_rate"),
        "accepted": summary.get("accepted"),
        "api_latency_ms": summary.get("api_latency_ms"),
        "e2e_latency_ms": summary.get("e2e_latency_ms"),
        "converge_seconds": summary.get("converge_seconds"),
        "max_outbox_depth": int(stages["outbox_depth"]["max"]),
        "max_pending": int(stages["pending"]["max"]),
        # what each stage held (mean, max) and the ms a payment spent at each (bench/analysis.py)
        "stages": stages,
        "stage_lag_ms": lags,
        "limiting_stage": analysis.limiting_stage(lags),
        "cpu_ms_per_payment": {k: round(v * 1000 / accepted, 3) for k, v in cpu.items()},
        # average over the step's whole wall time (load + convergence)
        "cpu_cores_busy": round(sum(cpu.values()) / max(wall, 1e-9), 2),
        # processes that exited during the step (their CPU after start() is not counted)
        "cpu_process_exits": dict(meter.exited),
        "invariants": summary.get("invariants"),
    }


def step_seconds(rate: float, seconds: float, min_payments: int) -> float:
    """A step's duration: `seconds`, longer when that would send fewer than `min_payments`."""
    return max(seconds, min_payments / rate) if rate > 0 else seconds


WARMUP_RATE, WARMUP_SECONDS = 50.0, 2.0


class Arm:
    """One configuration under test on a deployment of its own (per-run databases, users and
    vhost): its roles started with `overrides`, stepped up one rate at a time. `pause()` stops its
    roles (SIGTERM, as an operator would) so that another arm can be measured alone on the shared
    servers; the next `step()` starts them again (the data stays) and warms them up."""

    def __init__(self, label: str, tmp: Path, overrides: dict[str, str] | None = None, history_rows: int = 0) -> None:
        self.label = label
        self.overrides = dict(overrides or {})
        self.history_rows = history_rows
        self.env = Deployment(tmp / label)
        self.results: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.history: dict[str, Any] | None = None
        self.finished = False  # a step was not sustained, or a role exited
        self.paused = True  # its roles are stopped (not started yet, or by pause())
        self.interleaved_with: list[str] = []

    def open(self) -> Arm:
        self.env.create()
        if self.history_rows:
            log(f"history: pre-filling {self.history_rows:,} finalized payments (request and inbox rows)")
            self.history = self.env.prefill_history(self.history_rows)
            log(f"  -> {self.history}")
        for role in ("orchestrator", "scanner", "wallet"):
            self.env.add(role, **self.overrides)
        return self

    def start(self) -> None:
        """Start the roles, then warm them up: fresh processes open connections and take code paths
        for the first time, so a short unmeasured load first (each step measures warm roles)."""
        for process in self.env.processes.values():
            if not process.running:
                process.start()
        for process in self.env.processes.values():
            process.wait_ready()
        self.paused = False
        run_load(self.env, WARMUP_RATE, WARMUP_SECONDS, [self.env.processes["orchestrator"].url])

    def step(self, rate: float, seconds: float, min_payments: int) -> dict[str, Any] | None:
        """One step at `rate`; None when a role exited since the last step (the arm is finished)."""
        if self.paused:
            self.start()
        elif not self.roles_running():
            log(f"[{self.label}] a role exited since the last step; stopping")
            self.finished = True
            return None
        quiet = wait_quiet()
        duration = step_seconds(rate, seconds, min_payments)
        log(f"[{self.label}] step {rate:g}/s for {duration:g} s (servers idle after {quiet} s)")
        step = measure_step(self.env, rate, duration)
        self.results.append(step)
        log(
            f"  -> {step['verdict']}: api p99 {step['api_latency_ms']}, e2e p99 {step['e2e_latency_ms']}, "
            f"max outbox {step['max_outbox_depth']}, limiting {step['limiting_stage']} {step['stage_lag_ms']}"
        )
        if step["sustained"]:
            self.best = step
        if not step["sustained"] or not self.roles_running():
            if step["sustained"]:
                log("  a role exited during the step; stopping")
            self.finished = True
        return step

    def roles_running(self) -> bool:
        return all(p.running for p in self.env.processes.values())

    def pause(self) -> None:
        for process in self.env.processes.values():
            process.stop()
        self.paused = True

    def close(self) -> None:
        self.env.destroy()

    def summary(self) -> dict[str, Any]:
        return {
            "settings": self.overrides,
            "steps": self.results,
            "best": self.best,
            "knee": analysis.knee(self.results),
            "limiting_stage": analysis.run_limiting_stage(self.results),
            "method": {
                "interleaved_with": self.interleaved_with,
                "roles": (
                    "stopped between steps, started and warmed up before each"
                    if self.interleaved_with
                    else "started once, running throughout"
                ),
                "warmup": {"rate": WARMUP_RATE, "seconds": WARMUP_SECONDS, "measured": False},
            },
            **({"history": self.history} if self.history else {}),
        }


def step_up(arm: Arm, steps: list[float], seconds: float, min_payments: int = 0) -> dict[str, Any]:
    """Step `arm` up through `steps`, its roles running from the first step to the last."""
    try:
        arm.open()
        for rate in steps:
            arm.step(rate, seconds, min_payments)
            if arm.finished:
                break
    finally:
        arm.close()
    return arm.summary()


def step_up_interleaved(
    arms: list[Arm], steps: list[float], seconds: float, min_payments: int = 0
) -> list[dict[str, Any]]:
    """Step several arms up together, one rate at a time: at each rate every arm still going runs
    its step alone (the others' roles stopped, so the shared servers work for it only), the arms'
    order alternating from one rate to the next. A machine whose speed drifts during the run
    (another tenant, thermal limits: twofold here within an hour) then drifts for every arm alike,
    where arms run one after the other would compare one hour's machine with the next's. An arm
    stops at its first step that is not sustained; the others go on."""
    for arm in arms:
        arm.interleaved_with = [a.label for a in arms if a is not arm]
    try:
        for arm in arms:
            arm.open()
        for i, rate in enumerate(steps):
            going = [a for a in (arms if i % 2 == 0 else arms[::-1]) if not a.finished]
            if not going:
                break
            for arm in going:
                arm.step(rate, seconds, min_payments)
                arm.pause()
    finally:
        for arm in arms:
            arm.close()
    return [arm.summary() for arm in arms]


def run_arms(doc: dict[str, Any], args: argparse.Namespace, steps: list[float], tmp: Path) -> None:
    """`stepup` (the defaults), and beside it `batching_off` (every lever of issue 22 off:
    bench/analysis.py BATCHING_OFF) unless --no-compare, and `history` (the defaults on tables
    pre-filled with --history-rows payments) when asked: several arms run interleaved rate by
    rate, one arm alone runs its roles throughout."""
    arms = [Arm("stepup", tmp)]
    missing: list[str] = []
    if not args.no_compare:
        overrides, missing = analysis.batching_off({v.env for v in config.VARIABLES})
        log(f"batching off: {overrides} (settings not in this code, skipped: {missing})")
        arms.append(Arm("batching-off", tmp, overrides))
    if args.history_rows:
        arms.append(Arm("history", tmp, history_rows=args.history_rows))
    if len(arms) == 1:
        summaries = [step_up(arms[0], steps, args.step_seconds, args.min_payments)]
    else:
        summaries = step_up_interleaved(arms, steps, args.step_seconds, args.min_payments)
    for arm, summary in zip(arms, summaries, strict=True):
        doc[arm.label.replace("-", "_")] = summary  # stepup, batching_off, history
    if not args.no_compare:
        doc["batching_off"]["settings_missing"] = missing
    if args.history_rows:
        doc["history_vs_empty"] = compare_history(doc["stepup"], doc["history"])


def compare_history(empty: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """The history run against the empty-table run of the same invocation: best rate, and at each
    rate both sustained, the API and end-to-end p99 (ratio > 1 = slower with history)."""
    full_steps = {s["rate"]: s for s in full["steps"] if s["sustained"]}
    per_rate = []
    for step in empty["steps"]:
        other = full_steps.get(step["rate"])
        if not step["sustained"] or other is None:
            continue
        row: dict[str, Any] = {"rate": step["rate"]}
        for key in ("api_latency_ms", "e2e_latency_ms"):
            a, b = (step[key] or {}).get("p99"), (other[key] or {}).get("p99")
            row[f"{key[:-11]}_p99_ms"] = [a, b]
            row[f"{key[:-11]}_p99_ratio"] = round(b / a, 3) if a and b else None
        per_rate.append(row)
    best_empty, best_full = (empty["best"] or {}).get("rate"), (full["best"] or {}).get("rate")
    return {
        "best_rate": [best_empty, best_full],
        "best_rate_ratio": round(best_full / best_empty, 3) if best_empty and best_full else None,
        "per_rate": per_rate,
    }


def scale_out(rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
    """2 orchestrators + 2 scanners + 2 wallets; each wallet calls back its own orchestrator."""
    env = Deployment(tmp / "scaleout")
    try:
        env.create()
        orchestrators = [env.add("orchestrator", f"orchestrator-{i}") for i in range(2)]
        for i in range(2):
            env.add("scanner", f"scanner-{i}")
            env.add("wallet", f"wallet-{i}", CHANCEPAY_ORCHESTRATOR_URL=orchestrators[i].url)
        env.start_all()
        wait_quiet()
        log(f"scale-out: 2+2+2 roles at {rate:g}/s for {seconds:g} s")
        meter = CpuMeter(role_pids(env))
        meter.start()
        began = time.monotonic()
        summary, load_cpu = run_load(env, rate, seconds, [o.url for o in orchestrators])
        wall = time.monotonic() - began
        cpu = meter.stop()
        published = sum(env.processes[f"scanner-{i}"].metric("chancepay_outbox_published_total") for i in range(2))
        duplicates = sum(
            env.processes[f"wallet-{i}"].metric("chancepay_wallet_messages_total", outcome="duplicate")
            for i in range(2)
        )
        per_scanner = [env.processes[f"scanner-{i}"].metric("chancepay_outbox_published_total") for i in range(2)]
        per_wallet = [
            sum(
                env.processes[f"wallet-{i}"].metric("chancepay_wallet_messages_total", outcome=o)
                for o in ("succeeded", "failed")
            )
            for i in range(2)
        ]
        ok, why = sustained(summary, rate)
        return {
            "rate": rate,
            "sustained": ok,
            "verdict": why,
            "accepted": summary.get("accepted"),
            "published": published,
            "published_per_scanner": per_scanner,
            "deducted_per_wallet": per_wallet,
            "published_twice": max(0, int(published) - int(summary.get("accepted") or 0)),
            "wallet_duplicates": duplicates,
            "api_latency_ms": summary.get("api_latency_ms"),
            "e2e_latency_ms": summary.get("e2e_latency_ms"),
            "invariants": summary.get("invariants"),
            "cpu_cores_busy": round((sum(cpu.values()) + load_cpu) / max(wall, 1e-9), 2),
        }
    finally:
        env.destroy()


def raw_limits(seconds: float) -> dict[str, Any] | None:
    log("raw limits (bench.raw_limits)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.raw_limits", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if result.returncode != 0:
        log(f"raw limits failed: {result.stderr[-1000:]}")
        return None
    return json.loads(result.stdout)


def recorded_raw_limits(seconds: float, *, reuse: bool, store: Path) -> dict[str, Any] | None:
    """The machine's raw limits for this result: measured now (and kept in `store`), or with
    reuse=True the last measurement from `store`, marked as reused with its time, so every JSON
    result carries the limits its ratios were computed from."""
    if reuse and store.exists():
        raw: dict[str, Any] = json.loads(store.read_text())
        raw["reused_from_earlier_run"] = True
        return raw
    measured = raw_limits(seconds)
    if measured is not None:
        measured["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(measured, indent=2))
    return measured


def setting_facts(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The hardware, the servers' versions and the durability settings the results were measured
    with (from the raw limits' machine facts; the product always publishes persistent messages
    with publisher confirms to a quorum queue)."""
    machine = (raw or {}).get("machine") or {}
    mariadb, rabbitmq = machine.get("mariadb") or {}, machine.get("rabbitmq") or {}
    return {
        "hardware": {k: machine.get(k) for k in ("cpu_model", "cores", "cores_usable", "memory_bytes", "kernel")},
        "servers": {"mariadb": mariadb.get("version"), "rabbitmq": rabbitmq.get("version")},
        "durability": {
            **{
                k: mariadb.get(k)
                for k in (
                    "innodb_flush_log_at_trx_commit",
                    "sync_binlog",
                    "log_bin",
                    "innodb_doublewrite",
                    "innodb_flush_method",
                )
            },
            "fsync_probe": machine.get("fsync_probe"),
            "queue_type": rabbitmq.get("queue_type"),
            "messages_persistent": True,
            "publisher_confirms": True,
        },
    }


def add_ratios(doc: dict[str, Any]) -> None:
    """The best sustained rate against the single-payment limits and against the batched ones."""
    best = doc["stepup"]["best"]
    smallest = (doc.get("raw_limits") or {}).get("smallest_limit")
    if not smallest:
        return
    doc["smallest_limit"] = smallest
    doc["ratio_to_smallest_limit"] = round(best["rate"] / smallest["rate_per_s"], 3) if best else 0.0
    combined = smallest.get("all_stages_sharing_machine_per_s")
    if combined and best:
        doc["ratio_to_all_stages_sharing_machine"] = round(best["rate"] / combined, 3)
    batched = smallest.get("batched") or {}
    if best and batched.get("all_stages_sharing_machine_per_s"):
        doc["ratio_to_batched_limit"] = round(best["rate"] / batched["rate_per_s"], 3)
        doc["ratio_to_batched_all_stages_sharing_machine"] = round(
            best["rate"] / batched["all_stages_sharing_machine_per_s"], 3
        )


def compare_with_batching_off(doc: dict[str, Any]) -> None:
    """`batching_comparison`: the two step-ups of this run against each other and the issue's targets."""
    sharing = (doc.get("smallest_limit") or {}).get("all_stages_sharing_machine_per_s")
    doc["batching_comparison"] = analysis.compare_batching(doc["batching_off"], doc["stepup"], sharing)


def _step_lines(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'rate/s':>7} {'achieved':>8} {'api p50/p99 ms':>16} {'e2e p50/p99 ms':>16} "
        f"{'max outbox':>10} {'cores':>5} {'limiting':>8}  verdict"
    ]
    for s in steps:
        api, e2e = s["api_latency_ms"] or {}, s["e2e_latency_ms"] or {}
        lines.append(
            f"{s['rate']:>7g} {s['achieved_rate'] or 0:>8} {api.get('p50')!s:>7}/{api.get('p99')!s:<8} "
            f"{e2e.get('p50')!s:>7}/{e2e.get('p99')!s:<8} {s['max_outbox_depth']:>10} {s['cpu_cores_busy']:>5} "
            f"{s.get('limiting_stage')!s:>8}  {s['verdict']}"
        )
    return lines


def table(doc: dict[str, Any]) -> str:
    lines = _step_lines(doc["stepup"]["steps"])
    best = doc["stepup"]["best"]
    lines.append(
        f"best sustained rate: {best['rate'] if best else None}/s; knee (e2e p99 < 100 ms): "
        f"{(doc.get('knee') or {}).get('rate')}/s; limiting stage: {doc['stepup'].get('limiting_stage')}"
    )
    if doc.get("ratio_to_smallest_limit") is not None:
        lines.append(
            f"ratio to the smallest physical limit ({doc['smallest_limit']['stage']}, "
            f"{doc['smallest_limit']['rate_per_s']}/s): {doc['ratio_to_smallest_limit']}"
        )
    if doc.get("ratio_to_all_stages_sharing_machine") is not None:
        lines.append(
            f"ratio to the all-stages-sharing limit: {doc['ratio_to_all_stages_sharing_machine']}"
            f" (batched limits: {doc.get('ratio_to_batched_all_stages_sharing_machine')})"
        )
    if doc.get("batching_comparison"):
        lines.append("batching off (size 1):")
        lines += _step_lines(doc["batching_off"]["steps"])
        lines.append(f"batching off vs on: {json.dumps(doc['batching_comparison']['checks'])}")
    if doc.get("history"):
        h = doc["history"]
        lines.append(
            f"with {h['history']['rows']:,} finalized payments of history "
            f"({h['history']['table_bytes']} bytes, pre-filled in {h['history']['prefill_seconds']} s):"
        )
        lines += _step_lines(h["steps"])
        lines.append(f"history vs empty: {json.dumps(doc['history_vs_empty'])}")
    if doc.get("scaleout"):
        so = doc["scaleout"]
        lines.append(
            f"scale-out 2+2+2 at {so['rate']}/s: {so['verdict']}, published {so['published']} for "
            f"{so['accepted']} accepted, published twice {so['published_twice']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps",
        default="10,100,200,300,400,500,600,700,800,1000,1200,1600",
        help="comma-separated rates (payments/s), tried in order until one is not sustained",
    )
    p.add_argument("--step-seconds", type=float, default=15.0)
    p.add_argument(
        "--min-payments",
        type=int,
        default=600,
        help="a step lasts long enough to send at least this many payments (the 10/s step: 60 s), "
        "so its p99 rests on enough samples",
    )
    p.add_argument("--raw-seconds", type=float, default=3.0)
    p.add_argument(
        "--scaleout-rate",
        type=float,
        default=None,
        help="default: 80%% of the best sustained rate (six processes on the same cores cost more "
        "than three: at the knee itself scale-out measures overload, not correctness)",
    )
    p.add_argument("--scaleout-seconds", type=float, default=20.0)
    p.add_argument(
        "--skip-raw",
        action="store_true",
        help="reuse the raw limits last measured (.bench/raw-limits.json) instead of measuring",
    )
    p.add_argument(
        "--history-rows",
        type=int,
        default=0,
        help="also run the step-up on tables pre-filled with this many finalized payments "
        "(make bench-history: 10,000,000) and compare with the empty run",
    )
    p.add_argument("--skip-scaleout", action="store_true")
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the batching-off step-up (every batch size 1) that the default run compares with",
    )
    p.add_argument("--output", default=str(ROOT / ".bench" / "latest.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = [float(x) for x in args.steps.split(",") if x.strip()]

    doc: dict[str, Any] = {
        "schema": "chancepay.bench/1",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
    }
    # Role logs stay in .bench/logs/<start time>/ for a post-mortem of a failed step.
    logs = Path(args.output).parent / "logs" / doc["started_at"].replace(":", "")
    tmp = logs
    doc["raw_limits"] = recorded_raw_limits(
        args.raw_seconds, reuse=args.skip_raw, store=Path(args.output).parent / "raw-limits.json"
    )
    run_arms(doc, args, steps, tmp)
    best = doc["stepup"]["best"]
    add_ratios(doc)
    doc["knee"] = {
        **(doc["stepup"]["knee"] or {"rate": None}),
        "max_sustained_rate": best["rate"] if best else None,
        **setting_facts(doc.get("raw_limits")),
    }
    if not args.no_compare:
        compare_with_batching_off(doc)
    if not args.skip_scaleout:
        rate = args.scaleout_rate or (round(0.8 * best["rate"]) if best else steps[0])
        doc["scaleout"] = scale_out(rate, args.scaleout_seconds, tmp)
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = emit(doc, args.output)
    (Path(args.output).parent / f"bench-{doc['started_at'].replace(':', '')}.json").write_text(text + "\n")
    print(table(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
