"""The Makefile: the URLs `make run` exports and provisions are the code's defaults (the second
shell, issue 20: a shell with no variable set reaches what `make run` made); `make run` tells the
supervisor it runs under make (so hints name ORCHESTRATOR_PORT=..., not a variable make ignores);
every make verb the docs name is a target; `make check` needs no server."""

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
    for role, variable in (
        ("orchestrator", "ORCHESTRATOR_PORT"),
        ("scanner", "SCANNER_PORT"),
        ("wallet", "WALLET_PORT"),
        ("auditor", "AUDITOR_PORT"),
    ):
        assert f"{variable} ?=" in MAKEFILE
        assert port_knob(role, via_make=True).startswith(f"make run {variable}=")
        assert port_knob(role, via_make=False).startswith(f"chancepay dev --ports {role}=")


DOCS_WITH_VERBS = ("README.md", "docs/contributing.md")


def test_every_make_verb_the_docs_name_is_a_target() -> None:
    targets = {
        t
        for mk in [ROOT / "Makefile", *(ROOT / "mk").glob("*.mk")]
        for t in re.findall(r"^([a-z0-9-]+):", mk.read_text(), re.MULTILINE)
    }
    for page in DOCS_WITH_VERBS:
        named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", (ROOT / page).read_text()))
        assert {"check", "test", "test-unit"} <= named or page != "README.md", named
        missing = named - targets
        assert not missing, f"{page} names make verbs the Makefile lacks: {sorted(missing)}"


def test_make_check_needs_no_server() -> None:
    """`make check` depends on the test venv only, never on `services`; its unit tier is the one
    with the socket guard."""
    deps = re.search(r"^check: (.*?)##", MAKEFILE, re.MULTILINE)
    assert deps and deps.group(1).split() == ["test-venv"], deps
    unit = re.search(r"^test-unit: (.*?)##", MAKEFILE, re.MULTILINE)
    assert unit and "services" not in unit.group(1).split()
    assert "def socket_guard" in (ROOT / "tests" / "unit" / "conftest.py").read_text()
