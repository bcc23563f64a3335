"""bench/analysis.py: the limiting stage, the knee, the batching-off settings and the comparison
of batching off against on, on made-up step results (no servers)."""

from __future__ import annotations

from typing import Any

from bench import analysis


def _step(
    rate: float,
    *,
    sustained: bool = True,
    api: float = 5.0,
    e2e: float = 40.0,
    cpu: dict[str, float] | None = None,
    limiting: str | None = "api",
) -> dict[str, Any]:
    return {
        "rate": rate,
        "sustained": sustained,
        "api_latency_ms": {"p99": api},
        "e2e_latency_ms": {"p99": e2e},
        "cpu_ms_per_payment": cpu or {"orchestrator": 1.0, "load_generator": 5.0},
        "limiting_stage": limiting,
        "stage_lag_ms": {},
    }


def test_batching_off_sets_the_sizes_this_code_has_and_names_the_missing_ones() -> None:
    known = {
        "CHANCEPAY_CALLBACK_BATCH_SIZE",
        "CHANCEPAY_SCANNER_BATCH_SIZE",
        "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS",
        "CHANCEPAY_API_GROUP_SIZE",
        "CHANCEPAY_FOO_BATCH_SIZE",
        "CHANCEPAY_DB_POOL_SIZE",
        "CHANCEPAY_SCANNER_URL",
    }
    overrides, missing = analysis.batching_off(known)
    assert overrides == {
        "CHANCEPAY_API_GROUP_SIZE": "1",
        "CHANCEPAY_CALLBACK_BATCH_SIZE": "1",
        "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS": "0",
        "CHANCEPAY_FOO_BATCH_SIZE": "1",
        "CHANCEPAY_SCANNER_URL": "",
    }
    assert missing == ["CHANCEPAY_SCANNER_BATCHES_IN_FLIGHT", "CHANCEPAY_WALLET_BATCH_SIZE"]


def test_the_batching_off_settings_exist_or_are_reported_missing_for_this_code() -> None:
    from chancepay.core import config

    known = {v.env for v in config.VARIABLES}
    overrides, missing = analysis.batching_off(known)
    assert "CHANCEPAY_CALLBACK_BATCH_SIZE" in overrides and "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS" in overrides
    assert overrides["CHANCEPAY_SCANNER_URL"] == "", "batching off: no nudge, the scanner polls as before"
    assert set(overrides) | set(missing) >= set(analysis.BATCHING_OFF)
    assert "CHANCEPAY_SCANNER_BATCH_SIZE" not in overrides


def test_stage_lags_by_littles_law_and_the_largest_limits() -> None:
    samples = {"outbox_age_ms": 12.0, "outbox_depth": 10.0, "queue_ready": 200.0, "pending": 400.0}
    lags = analysis.stage_lags(samples, 1000.0, 30.0)  # the API p50
    assert lags == {"api": 30.0, "scanner": 12.0, "broker": 200.0, "wallet": 190.0}
    assert analysis.limiting_stage(lags) == "broker"
    assert analysis.limiting_stage({}) is None
    assert analysis.stage_lags({}, 0.0, None) == {"api": 0.0, "scanner": 0.0, "broker": 0.0, "wallet": 0.0}


def test_the_run_is_limited_where_it_first_failed() -> None:
    steps = [_step(100), _step(200, limiting="scanner"), _step(400, sustained=False, limiting="wallet")]
    assert analysis.run_limiting_stage(steps)["stage"] == "wallet"
    assert analysis.run_limiting_stage(steps[:2]) == {
        "rate": 200,
        "sustained": True,
        "stage": "scanner",
        "stage_lag_ms": {},
    }
    assert analysis.run_limiting_stage([]) is None


def test_the_knee_is_the_highest_sustained_rate_under_100_ms() -> None:
    steps = [
        _step(10, e2e=150.0),
        _step(100, e2e=60.0),
        _step(300, e2e=99.0),
        _step(400, e2e=120.0),
        _step(500, sustained=False, e2e=50.0),
    ]
    knee = analysis.knee(steps)
    assert knee is not None and (knee["rate"], knee["e2e_p99_ms"]) == (300, 99.0)
    assert analysis.knee([_step(10, e2e=100.0)]) is None


def test_batching_off_against_on() -> None:
    off = {
        "best": {"rate": 300},
        "steps": [
            _step(10, api=4.0, cpu={"orchestrator": 10.0, "load_generator": 3.0}),
            _step(300, cpu={"orchestrator": 2.0, "mariadb": 1.0}),
            _step(400, sustained=False),
        ],
    }
    on = {
        "best": {"rate": 800},
        "steps": [
            _step(10, api=3.5, cpu={"orchestrator": 4.0, "load_generator": 3.0}),
            _step(300, cpu={"orchestrator": 1.0, "mariadb": 0.5}),
            _step(600, e2e=80.0),
            _step(800, e2e=150.0),
        ],
    }
    out = analysis.compare_batching(off, on, 2000.0)
    assert out["best_rate"] == [300, 800] and out["best_rate_ratio"] == 2.667
    assert [r["rate"] for r in out["per_rate"]] == [10, 300]
    checks = out["checks"]
    assert checks["best_rate_at_least_2x"]["met"] is True
    assert checks["ratio_to_single_payment_sharing_limit"] == {"value": 0.4, "target": 0.31, "met": True}
    assert checks["e2e_p99_ms_at_80pct_of_best"]["rate"] == 600
    assert checks["e2e_p99_ms_at_80pct_of_best"]["met"] is True
    assert checks["system_cpu_reduction_at_300"] == {"value": 0.5, "target": 0.4, "met": True}
    assert checks["api_p99_ms_at_10_on_vs_off"]["met"] is True
    assert checks["cpu_ms_per_payment_at_10_on_over_off"] == {"value": 0.4, "target": 0.5, "met": True}


def test_a_comparison_without_the_rates_reports_none() -> None:
    out = analysis.compare_batching({"best": None, "steps": []}, {"best": None, "steps": []}, None)
    assert out["best_rate_ratio"] is None
    assert all(check["met"] is None for check in out["checks"].values())


def test_the_report_renders_a_document(tmp_path, capsys) -> None:
    import json

    from bench import report

    steps = [_step(10), _step(300)]
    doc = {
        "stepup": {"steps": steps, "best": steps[-1], "limiting_stage": {"stage": "api"}},
        "batching_off": {"steps": steps[:1]},
        "knee": {
            "rate": 300,
            "e2e_p99_ms": 40.0,
            "api_p99_ms": 5.0,
            "hardware": {"cores": 2},
            "servers": {"mariadb": "10.11"},
            "durability": {"innodb_flush_log_at_trx_commit": 1},
        },
        "batching_comparison": analysis.compare_batching(
            {"best": steps[0], "steps": steps[:1]}, {"best": steps[-1], "steps": steps}, 1000.0
        ),
    }
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(doc))
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| knee (highest rate with e2e p99 < 100 ms) | 300/s |" in out
    assert "`innodb_flush_log_at_trx_commit=1`" in out
    row = next(line for line in out.splitlines() if line.startswith("| 300 |"))
    assert row.count(" — / ") == 5  # a rate the off arm never reached: a dash in each of its cells
    assert "| 300 | — / 5.0 |" in out and "| best_rate_at_least_2x | 30.0 | 2.0 | True |" in out


def test_a_low_rate_step_lasts_long_enough_for_its_minimum_of_payments() -> None:
    from bench.run import step_seconds

    assert step_seconds(10, 15, 600) == 60  # the 10/s step: 600 payments, a p99 worth reading
    assert step_seconds(800, 15, 600) == 15
    assert step_seconds(10, 15, 0) == 15
