"""Markdown for docs/performance.md and the README from one `bench.run` JSON document:

    python -m bench.report [.bench/latest.json]

The knee, the maximum and the settings they were measured with, then batching off against on per
rate, and issue 22's checks. Prints to stdout; reads nothing but the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.analysis import system_cpu_ms


def _p(step: dict[str, Any] | None, key: str, q: str = "p99") -> Any:
    return _cell(((step or {}).get(key) or {}).get(q))


def _cell(value: Any) -> Any:
    """A table cell: nothing measured (a step the other arm never reached) is a dash."""
    return "—" if value is None else value


def settings_line(doc: dict[str, Any]) -> str:
    knee = doc.get("knee") or {}
    hw, servers, dur = knee.get("hardware") or {}, knee.get("servers") or {}, knee.get("durability") or {}
    return (
        f"{hw.get('cores')} cores ({hw.get('cpu_model')}), MariaDB {servers.get('mariadb')} with "
        f"`innodb_flush_log_at_trx_commit={dur.get('innodb_flush_log_at_trx_commit')}` "
        f"(sync_binlog {dur.get('sync_binlog')}, binlog {'on' if dur.get('log_bin') else 'off'}), RabbitMQ "
        f"{servers.get('rabbitmq')} with a {dur.get('queue_type')} queue, persistent messages, publisher confirms"
    )


def headline(doc: dict[str, Any]) -> list[str]:
    knee, best = doc.get("knee") or {}, (doc.get("stepup") or {}).get("best")
    cmp = doc.get("batching_comparison") or {}
    return [
        "| | rate | API p99 | end-to-end p99 |",
        "|---|---|---|---|",
        f"| knee (highest rate with e2e p99 < 100 ms) | {knee.get('rate')}/s | {knee.get('api_p99_ms')} ms | "
        f"{knee.get('e2e_p99_ms')} ms |",
        f"| maximum sustained | {(best or {}).get('rate')}/s | {_p(best, 'api_latency_ms')} ms | "
        f"{_p(best, 'e2e_latency_ms')} ms |",
        f"| maximum with batching off (every issue-22 lever off) | {(cmp.get('best_rate') or [None])[0]}/s | | |",
        "",
        f"Settings: {settings_line(doc)}. Ratio to the single-payment all-stages-sharing limit "
        f"{doc.get('ratio_to_all_stages_sharing_machine')}, to the batched one "
        f"{doc.get('ratio_to_batched_all_stages_sharing_machine')}; limiting stage "
        f"{((doc.get('stepup') or {}).get('limiting_stage') or {}).get('stage')}.",
    ]


def comparison(doc: dict[str, Any]) -> list[str]:
    off = {s["rate"]: s for s in (doc.get("batching_off") or {}).get("steps", [])}
    lines = [
        "| rate/s | API p99 ms off / on | e2e p99 ms off / on | system CPU ms per payment off / on | "
        "limiting stage off / on | verdict off / on |",
        "|---|---|---|---|---|---|",
    ]
    for on in (doc.get("stepup") or {}).get("steps", []):
        a = off.get(on["rate"])
        lines.append(
            f"| {on['rate']:g} | {_p(a, 'api_latency_ms')} / {_p(on, 'api_latency_ms')} | "
            f"{_p(a, 'e2e_latency_ms')} / {_p(on, 'e2e_latency_ms')} | "
            f"{system_cpu_ms(a) if a else '—'} / {system_cpu_ms(on)} | "
            f"{_cell((a or {}).get('limiting_stage'))} / {on.get('limiting_stage')} | "
            f"{_cell((a or {}).get('verdict'))} / {on.get('verdict')} |"
        )
    checks = (doc.get("batching_comparison") or {}).get("checks") or {}
    lines += ["", "| check (issue 22) | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {c.get('value')} | {c.get('target')} | {c.get('met')} |" for name, c in checks.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    doc = json.loads(Path(args[0] if args else ".bench/latest.json").read_text())
    print("\n".join([*headline(doc), "", *comparison(doc)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
