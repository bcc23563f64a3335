"""The second shell (issue 20): the URLs `make run` exports and provisions are the code's defaults,
so a shell with no variable set reaches what `make run` made; and `make run` tells the supervisor
it runs under make (so hints name ORCHESTRATOR_PORT=..., not a variable make ignores)."""

from __future__ import annotations

import re
from pathlib import Path

from chancepay.core.config import VARIABLES
from chancepay.devrun import port_knob

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text()


def test_make_runs_database_urls_are_the_code_defaults() -> None:
    exported = dict(re.findall(r"^export (CHANCEPAY_\w+) \?= (\S+)$", MAKEFILE, re.MULTILINE))
    defaults = {v.env: v.default for v in VARIABLES}
    for name in ("CHANCEPAY_ORCHESTRATOR_DB", "CHANCEPAY_WALLET_DB"):
        assert exported[name] == defaults[name], name
    assert "chancepay:chancepay@" not in MAKEFILE + "".join(defaults.values())


def test_make_run_passes_its_own_port_knobs_to_the_supervisor() -> None:
    recipe = MAKEFILE.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "chancepay dev --via-make --ports orchestrator=$(ORCHESTRATOR_PORT)" in recipe
    for role, variable in (("orchestrator", "ORCHESTRATOR_PORT"), ("scanner", "SCANNER_PORT"),
                           ("wallet", "WALLET_PORT")):
        assert f"{variable} ?=" in MAKEFILE
        assert port_knob(role, via_make=True).startswith(f"make run {variable}=")
        assert port_knob(role, via_make=False).startswith(f"chancepay dev --ports {role}=")
