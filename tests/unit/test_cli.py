"""cli.py: the dispatcher knows every subcommand."""

from __future__ import annotations

from chancepay import cli


def test_every_subcommand_has_an_entry_in_the_dispatch_table() -> None:
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)
    # report commands print JSON on stdout, so their logs go to stderr
    reports = {"audit", "load", "outbox", "dlq", "trace", "clients"}
    assert {c for c, (_, report) in cli.COMMANDS.items() if report} == reports
