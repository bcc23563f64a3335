"""The dashboard's backlog panel and the chart's alerts, live (issue 11): a real Prometheus (Debian's
`prometheus`) scrapes the three roles every second with the chart's own alert rules loaded (their
durations compressed: `for: 10m` becomes seconds), a broker outage is injected under load, and
Prometheus' own API must show the backlog query rise and drain and the alerts go pending, firing
and resolved. The panel's series is drawn to a PNG (docs/img/outbox-backlog.png in the README is
one such run; CHANCEPAY_UPDATE_DOCS=1 writes it there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.env import free_port, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.invariants import assert_converged
from tests.support.payer import Payer
from tests.support.roles import Supervisor

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "chancepay" / "files" / "chancepay-rules.yaml"
PANEL_QUERY = "max(chancepay_outbox_depth)"  # the dashboard's first panel
DOCS_IMAGE = ROOT / "docs" / "img" / "outbox-backlog.png"
OUTAGE_SECONDS = 25


def compressed_rules(text: str) -> str:
    """The chart's rules with minutes turned into seconds (for: 10m -> for: 5s, [10m] -> [20s],
    [5m] -> [20s]): the same expressions and thresholds on a test's time scale."""
    text = re.sub(r"for: \d+m", "for: 5s", text)
    return re.sub(r"\[\d+m\]", "[20s]", text)


class Prometheus:
    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "rules.yaml").write_text(compressed_rules(RULES.read_text()))
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp / "rules.yaml")],
                    "scrape_configs": [{"job_name": "chancepay", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        with (tmp / "prometheus.log").open("wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_until(lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, 60, what="prometheus ready")

    def query(self, q: str) -> list:
        return httpx.get(self.url + "/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"]

    def series(self, q: str, start: float, end: float) -> list[tuple[float, float]]:
        r = httpx.get(
            self.url + "/api/v1/query_range", params={"query": q, "start": start, "end": end, "step": "1"}, timeout=10
        ).json()
        values = r["data"]["result"][0]["values"] if r["data"]["result"] else []
        return [(float(t), float(v)) for t, v in values]

    def alert_states(self) -> dict[str, str]:
        alerts = httpx.get(self.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in alerts}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def draw(series: list[tuple[float, float]], outage: tuple[float, float], fired: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = series[0][0]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.plot(
        [t - t0 for t, _ in series],
        [v for _, v in series],
        color="#1f77b4",
        linewidth=2,
        label=f"{PANEL_QUERY} (outbox backlog)",
    )
    ax.axvspan(outage[0] - t0, outage[1] - t0, color="#d62728", alpha=0.12, label="RabbitMQ unreachable")
    for name, at in fired.items():
        ax.axvline(at - t0, color="#ff7f0e", linestyle="--", linewidth=1)
        ax.text(at - t0, ax.get_ylim()[1] * 0.92, f" {name} firing", fontsize=8, color="#ff7f0e")
    ax.set_xlabel("seconds")
    ax.set_ylabel("rows")
    ax.set_title("ChancePay outbox backlog during a broker outage (live Prometheus, 1 s scrapes)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def test_backlog_panel_and_alerts_live(make_stack, env, tmp_path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: `make test-tools` installs Debian's prometheus package")
    proxy = FaultProxy("127.0.0.1", env.amqp_port).start()
    prom = None
    try:
        via_proxy = env.amqp_url(port=proxy.port)
        s = make_stack(CHANCEPAY_SCANNER_RETRY_BASE_SECONDS="0.2", CHANCEPAY_SCANNER_RETRY_MAX_SECONDS="1")
        s.role("orchestrator").start()
        s.role("scanner", CHANCEPAY_AMQP_URL=via_proxy).start()
        s.role("wallet", CHANCEPAY_AMQP_URL=via_proxy).start()
        for r in s.roles.values():
            r.wait_ready()
        prom = Prometheus(tmp_path, [f"127.0.0.1:{r.port}" for r in s.roles.values()])
        begin = time.time()
        fired: dict[str, float] = {}
        seen: dict[str, set[str]] = {}
        # Scanner and wallet exit when the broker goes (seed design); the supervisor restarts them,
        # as Kubernetes would.
        with Supervisor(s, "scanner", "wallet"), Payer(s, rate=8, prefix="dash") as payer:
            wait_until(lambda: prom.query(PANEL_QUERY), 30, what="the panel's series in Prometheus")
            time.sleep(3)  # a few seconds of the healthy shape before the fault, for the picture
            proxy.set_mode("refuse")
            outage_start = time.time()

            def watch() -> bool:
                for name, state in prom.alert_states().items():
                    seen.setdefault(name, set()).add(state)
                    if state == "firing":
                        fired.setdefault(name, time.time())
                return time.time() - outage_start >= OUTAGE_SECONDS

            wait_until(watch, OUTAGE_SECONDS + 10, interval=0.5, what="the outage window")
            proxy.set_mode("pass")
            outage_end = time.time()
            wait_until(
                lambda: float(prom.query(PANEL_QUERY)[0]["value"][1]) == 0,
                120,
                interval=0.5,
                what="the panel back at 0",
            )
        drained = time.time()

        def resolved() -> bool:
            states = prom.alert_states()
            for name, state in states.items():
                seen.setdefault(name, set()).add(state)
            return "ChancePayOutboxBacklogGrowing" not in states

        wait_until(resolved, 60, interval=0.5, what="the backlog alert resolved")
        # A few seconds of the drained shape, for the picture and the assertion below.
        wait_until(
            lambda: [v for _, v in prom.series(PANEL_QUERY, begin, time.time())[-5:]].count(0.0) >= 4,
            30,
            interval=0.5,
            what="the panel at 0 for several scrapes",
        )
        series = prom.series(PANEL_QUERY, begin, time.time())
        peak = max(v for _, v in series)
        assert peak > 100, f"the backlog rose to {peak} rows only"
        now = time.time()
        assert [v for _, v in series[-5:]].count(0.0) >= 3, (
            f"the panel ends drained: {len(series)} points from {series[0][0] - begin:.1f} to "
            f"{series[-1][0] - begin:.1f} s (now {now - begin:.1f}, outage end {outage_end - begin:.1f}): {series[-8:]}"
        )
        assert {"pending", "firing"} <= seen.get("ChancePayOutboxBacklogGrowing", set()), (seen, peak)
        assert "firing" in seen.get("ChancePayBrokerUnreachable", set()), seen
        png = tmp_path / "outbox-backlog.png"
        draw(
            series,
            (outage_start, outage_end),
            {k: v for k, v in fired.items() if k in ("ChancePayOutboxBacklogGrowing",)},
            png,
        )
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        if os.environ.get("CHANCEPAY_UPDATE_DOCS") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, DOCS_IMAGE)
        print(
            f"\nlive dashboard: peak {peak:.0f} rows, drained {drained - outage_end:.1f} s after the broker "
            f"returned; alerts seen {sorted((k, sorted(v)) for k, v in seen.items())}"
        )
        assert_converged(s, payer.accepted)
    finally:
        if prom is not None:
            prom.stop()
        proxy.stop()


def test_the_readme_shows_a_backlog_picture_from_this_test() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/img/outbox-backlog.png)" in readme
    data = DOCS_IMAGE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
