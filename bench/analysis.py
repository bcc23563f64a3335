"""The bench's verdicts, as pure functions over step results (tests/bench/test_analysis.py): which
stage limits a step, the knee, the batching-off run's settings, and batching off against on.

A step's stage lags (milliseconds a payment spends at each stage, from the samples a step takes,
bench/stages.py, by Little's law where a count is all there is):
  api       the API's p50 (the request + outbox transaction; the group commit's linger when on; a
            median, comparable with the other stages' means)
  scanner   the outbox's oldest row's age, mean over the step (claim, publish, confirm, delete)
  broker    messages ready in the queue (not yet delivered to the wallet) / rate: the wallet's
            consumer did not keep up
  wallet    pending requests neither in the outbox nor ready in the queue / rate: deliveries at
            the wallet (prefetched, inbox transaction) and their callbacks to the orchestrator
The limiting stage of a step is the one with the largest lag.
"""

from __future__ import annotations

from typing import Any

KNEE_E2E_P99_MS = 100.0
# Batching off: every batch at size 1 (one transaction per payment, today's behaviour exactly) and
# the scanner's idle poll at its fixed interval. A setting this code does not have yet is skipped.
BATCHING_OFF = {
    "CHANCEPAY_API_GROUP_SIZE": "1",
    "CHANCEPAY_WALLET_BATCH_SIZE": "1",
    "CHANCEPAY_CALLBACK_BATCH_SIZE": "1",
    "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS": "0",  # the fixed 20 ms poll of before issue 22
    "CHANCEPAY_SCANNER_URL": "",  # no nudges
    "CHANCEPAY_SCANNER_BATCHES_IN_FLIGHT": "1",  # claim the next batch only once this one is settled
}
# Sizes that are not the batching issue 22 adds (the scanner claimed in batches before it).
NOT_BATCHING = frozenset({"CHANCEPAY_SCANNER_BATCH_SIZE"})


def batching_off(known: set[str]) -> tuple[dict[str, str], list[str]]:
    """Every lever of issue 22 off (the behaviour before it): group and batch sizes 1, the scanner
    polling at its fixed interval (claiming at every poll), no nudge.

    (the batching-off run's overrides among the settings `known` to this code, the wanted ones
    it does not have). Any other *_GROUP_SIZE or *_BATCH_SIZE setting is set to 1 as well."""
    wanted = dict(BATCHING_OFF)
    for env in sorted(known):
        if env.endswith(("_GROUP_SIZE", "_BATCH_SIZE")) and env not in NOT_BATCHING:
            wanted.setdefault(env, "1")
    return {k: v for k, v in wanted.items() if k in known}, sorted(k for k in wanted if k not in known)


def stage_lags(samples: dict[str, float], rate: float, api_p50_ms: float | None) -> dict[str, float]:
    """Milliseconds per stage (module docstring) from a step's mean samples: outbox_age_ms,
    outbox_depth, queue_ready, pending."""
    per_ms = max(rate, 1e-9) / 1000.0
    beyond = samples.get("pending", 0.0) - samples.get("outbox_depth", 0.0) - samples.get("queue_ready", 0.0)
    return {
        "api": round(api_p50_ms or 0.0, 1),
        "scanner": round(samples.get("outbox_age_ms", 0.0), 1),
        "broker": round(samples.get("queue_ready", 0.0) / per_ms, 1),
        "wallet": round(max(0.0, beyond) / per_ms, 1),
    }


def limiting_stage(lags: dict[str, float]) -> str | None:
    return max(lags, key=lambda k: lags[k]) if lags else None


def run_limiting_stage(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The limiting stage of a step-up: at its first step that was not sustained, or else at its
    highest step."""
    if not steps:
        return None
    step = next((s for s in steps if not s["sustained"]), steps[-1])
    return {
        "rate": step["rate"],
        "sustained": step["sustained"],
        "stage": step.get("limiting_stage"),
        "stage_lag_ms": step.get("stage_lag_ms"),
    }


def p99(step: dict[str, Any], key: str) -> float | None:
    value = (step.get(key) or {}).get("p99")
    return float(value) if value is not None else None


def knee(steps: list[dict[str, Any]], limit_ms: float = KNEE_E2E_P99_MS) -> dict[str, Any] | None:
    """The highest sustained step whose end-to-end p99 stayed under `limit_ms`."""
    under = [s for s in steps if s["sustained"] and (p99(s, "e2e_latency_ms") or float("inf")) < limit_ms]
    if not under:
        return None
    top = max(under, key=lambda s: s["rate"])
    return {
        "rate": top["rate"],
        "e2e_p99_ms": p99(top, "e2e_latency_ms"),
        "api_p99_ms": p99(top, "api_latency_ms"),
        "criterion": f"highest sustained step with end-to-end p99 < {limit_ms:g} ms",
    }


def system_cpu_ms(step: dict[str, Any]) -> float:
    """CPU ms per payment of the system's processes (roles and servers; the load generator excluded)."""
    return round(sum(v for k, v in (step.get("cpu_ms_per_payment") or {}).items() if k != "load_generator"), 3)


def _per_rate(off: list[dict[str, Any]], on: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_rate = {s["rate"]: s for s in on}
    rows = []
    for a in off:
        b = by_rate.get(a["rate"])
        if b is None:
            continue
        cpu_a, cpu_b = system_cpu_ms(a), system_cpu_ms(b)
        rows.append(
            {
                "rate": a["rate"],
                "sustained": [a["sustained"], b["sustained"]],
                "system_cpu_ms_per_payment": [cpu_a, cpu_b],
                "system_cpu_reduction": round(1 - cpu_b / cpu_a, 3) if cpu_a else None,
                "api_p99_ms": [p99(a, "api_latency_ms"), p99(b, "api_latency_ms")],
                "e2e_p99_ms": [p99(a, "e2e_latency_ms"), p99(b, "e2e_latency_ms")],
                "limiting_stage": [a.get("limiting_stage"), b.get("limiting_stage")],
            }
        )
    return rows


def _check(value: float | None, target: float, *, at_least: bool = True) -> dict[str, Any]:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"value": value, "target": target, "met": met}


def _row(rows: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["rate"] == rate), None)


def compare_batching(
    off: dict[str, Any], on: dict[str, Any], sharing_single: float | None, low_rate: float = 10, mid_rate: float = 300
) -> dict[str, Any]:
    """Batching off against on, from one invocation, with issue 22's targets as checks (a check
    whose rate was not stepped through is None)."""
    best_off, best_on = (off.get("best") or {}).get("rate"), (on.get("best") or {}).get("rate")
    rows = _per_rate(off["steps"], on["steps"])
    low, mid = _row(rows, low_rate), _row(rows, mid_rate)
    under = [s for s in on["steps"] if best_on and s["sustained"] and s["rate"] <= 0.8 * best_on]
    at80 = max(under, key=lambda s: s["rate"]) if under else None
    api_low = low["api_p99_ms"] if low else [None, None]
    cpu_low = low["system_cpu_ms_per_payment"] if low else [0.0, 0.0]
    return {
        "best_rate": [best_off, best_on],
        "best_rate_ratio": round(best_on / best_off, 3) if best_off and best_on else None,
        "per_rate": rows,
        "checks": {
            "best_rate_at_least_2x": _check(round(best_on / best_off, 3) if best_off and best_on else None, 2.0),
            "ratio_to_single_payment_sharing_limit": _check(
                round(best_on / sharing_single, 3) if best_on and sharing_single else None, 0.31
            ),
            "e2e_p99_ms_at_80pct_of_best": {
                **_check(p99(at80, "e2e_latency_ms") if at80 else None, KNEE_E2E_P99_MS, at_least=False),
                "rate": at80["rate"] if at80 else None,
            },
            f"system_cpu_reduction_at_{mid_rate:g}": _check(mid["system_cpu_reduction"] if mid else None, 0.4),
            # target: batching off's API p99 at that rate (on must be no worse)
            f"api_p99_ms_at_{low_rate:g}_on_vs_off": _check(api_low[1], api_low[0] or 0.0, at_least=False)
            if api_low[0] is not None
            else _check(None, 0.0),
            f"cpu_ms_per_payment_at_{low_rate:g}_on_over_off": _check(
                round(cpu_low[1] / cpu_low[0], 3) if cpu_low[0] else None, 0.5, at_least=False
            ),
        },
    }
