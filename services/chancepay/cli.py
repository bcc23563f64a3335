"""The `chancepay` console script: one subcommand per role and tool. Thin: parse, configure, run."""

from __future__ import annotations

import signal
import sys

# First thing, before the slow imports: in a container the role is PID 1, and the kernel drops a
# SIGTERM sent to PID 1 while it has no handler. A pod deleted while its role was still starting
# would then run on until the grace period's SIGKILL. Until the runner installs its own handler
# (finish in-flight work, then exit), SIGTERM simply ends the process.
if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

import argparse  # noqa: E402
import asyncio  # noqa: E402
from collections.abc import Callable, Coroutine  # noqa: E402
from typing import Any  # noqa: E402

from chancepay.core import logging as chancelog  # noqa: E402
from chancepay.core.config import ConfigError, Settings  # noqa: E402
from chancepay.core.eventloop import install_event_loop  # noqa: E402
from chancepay.core.migrations import SchemaTooNew  # noqa: E402

ROLES = ("orchestrator", "scanner", "wallet", "auditor")
DEV_ROLES = ROLES[:3]  # `chancepay dev`'s default (`make run` names the auditor too)
SUBPARSERS: dict[str, argparse.ArgumentParser] = {}  # for usage errors argparse cannot detect itself
DRY_RUN_HELP = "print what a real run would act on (JSON lines) and its summary; change nothing, record nothing"


def _positive(kind: type[float] | type[int]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chancepay", description="ChancePay (随缘付) payment pipeline")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for role, text in (
        ("orchestrator", "the payments API (port 8000)"),
        ("scanner", "the outbox scanner (port 8001)"),
        ("wallet", "the wallet consumer (port 8002)"),
        ("auditor", "the online audit of the invariants (port 8003)"),
    ):
        # --port-hint: what moves this role under the command that started it (`chancepay dev` passes it).
        sub.add_parser(role, help=text).add_argument("--port-hint", default=None, help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="create or upgrade both schemas, then exit")
    rec = sub.add_parser("reconcile", help="one reconciliation pass over stale pending requests, then exit")
    rec.add_argument("--age", type=float, default=None, help="override CHANCEPAY_RECONCILE_AGE_SECONDS")
    sub.add_parser("audit", help="print the invariant check of a live system as JSON; exit 1 on a violation")
    for add in (_add_load, _add_outbox, _add_dlq, _add_trace, _add_clients, _add_dev):
        add(sub)
    return p


def _add_load(sub: Any) -> None:
    load = sub.add_parser("load", help="open-loop load at RATE payments/s for DURATION s, then a JSON summary")
    load.add_argument("--rate", type=_positive(float), required=True, help="payments per second (open loop)")
    load.add_argument("--duration", type=_positive(float), required=True, help="seconds of load")
    load.add_argument(
        "--converge-timeout", type=_positive(float), default=120.0, help="seconds to wait for convergence"
    )
    load.add_argument(
        "--concurrency",
        type=_positive(int),
        default=64,
        help="HTTP connections (requests beyond them queue, and their wait counts as latency)",
    )
    load.add_argument(
        "--target",
        action="append",
        default=None,
        metavar="URL",
        help="orchestrator base URL; repeat to spread arrivals round-robin (default CHANCEPAY_ORCHESTRATOR_URL)",
    )


def _add_outbox(sub: Any) -> None:
    outbox = sub.add_parser("outbox", help="outbox rows: list the exhausted ones, put them back into rotation")
    outbox_sub = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = outbox_sub.add_parser("list", help="rows at the attempt limit (--all: every row), one JSON line each")
    listing.add_argument("--all", action="store_true", help="every outbox row, not only the exhausted ones")
    retry = outbox_sub.add_parser("retry", help="exhausted rows back into rotation (attempts 0, due now)")
    retry.add_argument("uuids", nargs="*", metavar="UUID")
    retry.add_argument("--all-exhausted", action="store_true", help="every row at the attempt limit")
    retry.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    SUBPARSERS["outbox_retry"] = retry


def _add_dlq(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="the dead-letter queue: list, show, replay through the outbox, purge")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "messages in the DLQ, one JSON line each, with why they are there"),
        ("show", "one message in full (ID: its message id / uuid, or #position)"),
        ("replay", "pending payments back into the outbox (the DLQ copy removed)"),
        ("purge", "remove messages from the DLQ"),
    ):
        p_ = dlq_sub.add_parser(name, help=text)
        SUBPARSERS[f"dlq_{name}"] = p_
        if name == "show":
            p_.add_argument("ids", nargs=1, metavar="ID")
        elif name in ("replay", "purge"):
            p_.add_argument("ids", nargs="*", metavar="ID")
            p_.add_argument("--all", action="store_true", help="every message in the DLQ")
            p_.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
        p_.add_argument("--limit", type=_positive(int), default=10000, help="look at most at this many messages")


def _add_trace(sub: Any) -> None:
    trace = sub.add_parser("trace", help="one payment's whole story: request, outbox, inbox, parked callback, DLQ")
    trace.add_argument("uuid", metavar="UUID")
    trace.add_argument("--limit", type=_positive(int), default=10000, help="DLQ messages to look through")


def _add_clients(sub: Any) -> None:
    clients = sub.add_parser("clients", help="API client keys: add (printed once), list (never keys), revoke")
    clients_sub = clients.add_subparsers(dest="action", required=True, metavar="ACTION")
    clients_sub.add_parser("add", help="a new key for client NAME (made when new); one JSON line").add_argument(
        "name", metavar="NAME"
    )
    clients_sub.add_parser("list", help="every client and its key ids, one JSON line each")
    revoke = clients_sub.add_parser("revoke", help="end one key of NAME (KEY_ID), or all of its keys")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("key_id", nargs="?", default=None, metavar="KEY_ID")


def _add_dev(sub: Any) -> None:
    dev = sub.add_parser("dev", help="run the three roles under a restarting supervisor (what `make run` uses)")
    dev.add_argument("--roles", default=",".join(DEV_ROLES), help="comma-separated roles to run")
    dev.add_argument(
        "--ports",
        default="",
        metavar="ROLE=PORT,...",
        help="move roles, e.g. orchestrator=18000,wallet=18002 (also points the wallet at the orchestrator)",
    )
    # `make run` passes --via-make: hints then name its variables (ORCHESTRATOR_PORT=...).
    dev.add_argument("--via-make", action="store_true", help=argparse.SUPPRESS)
    SUBPARSERS["dev"] = dev


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    install_event_loop()
    try:
        return asyncio.run(coro_factory()) or 0
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------- the commands
# Each imports what it runs when it runs (a role does not load the others' dependencies).
def _role_hint(args: argparse.Namespace) -> None:
    if getattr(args, "port_hint", None):
        from chancepay.core import runner

        runner.port_hint = args.port_hint


def _orchestrator(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.orchestrator.main import run

    _role_hint(args)
    return _run(lambda: run(settings))


def _scanner(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.scanner.main import run

    _role_hint(args)
    return _run(lambda: run(settings))


def _wallet(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.wallet.main import run

    _role_hint(args)
    return _run(lambda: run(settings))


def _auditor(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.auditor.main import run

    _role_hint(args)
    return _run(lambda: run(settings))


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.core.db import DatabaseUnavailable
    from chancepay.core.schema import migrate

    async def go() -> int:
        try:
            await migrate(settings)
        except DatabaseUnavailable:
            return 1  # its last [FAILED TO REACH DATABASE] line (gave_up) said why: no traceback
        return 0

    return _run(go)


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.reconcile import reconcile_main

    return _run(lambda: reconcile_main(settings, age=args.age))


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.audit import audit_main

    async def go() -> int:
        await _check_databases(settings, orchestrator=True, wallet=True)
        return await audit_main(settings)

    return _run(go)


async def _check_databases(settings: Settings, *, orchestrator: bool, wallet: bool) -> None:
    """Before an operator command's work: its databases answer as their users, schemas made."""
    from chancepay.core.preflight import check_database

    if orchestrator:
        await check_database(settings.orchestrator_db_url, "CHANCEPAY_ORCHESTRATOR_DB", settings.db_timeout)
    if wallet:
        await check_database(settings.wallet_db_url, "CHANCEPAY_WALLET_DB", settings.db_timeout)


def _load(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.load import load_main

    return _run(
        lambda: load_main(
            settings,
            rate=args.rate,
            duration=args.duration,
            converge_timeout=args.converge_timeout,
            concurrency=args.concurrency,
            targets=args.target,
        )
    )


def _ops(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.ops import ops_main

    async def go() -> int:
        if args.command in ("outbox", "trace"):
            await _check_databases(settings, orchestrator=True, wallet=args.command == "trace")
        elif args.command == "dlq":  # the dead letters live in the wallet's database; replay writes the outbox
            # and replay and purge the operator trail (core/trail.py), both in the orchestrator's
            await _check_databases(settings, orchestrator=args.action in ("replay", "purge"), wallet=True)
        return await ops_main(settings, args)

    return _run(go)


def _clients(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.core.clients import clients_main

    async def go() -> int:
        await _check_databases(settings, orchestrator=True, wallet=False)
        return await clients_main(settings, args.action, getattr(args, "name", None), getattr(args, "key_id", None))

    return _run(go)


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from chancepay.devrun import parse_ports, supervise

    return supervise([r for r in args.roles.split(",") if r], ports=parse_ports(args.ports), via_make=args.via_make)


# command -> (what runs it, whether its report goes to stdout (then its logs go to stderr))
COMMANDS: dict[str, tuple[Callable[[Settings, argparse.Namespace], int], bool]] = {
    "orchestrator": (_orchestrator, False),
    "scanner": (_scanner, False),
    "wallet": (_wallet, False),
    "auditor": (_auditor, False),
    "migrate": (_migrate, False),
    "reconcile": (_reconcile, False),
    "audit": (_audit, True),
    "load": (_load, True),
    "outbox": (_ops, True),
    "dlq": (_ops, True),
    "trace": (_ops, True),
    "clients": (_clients, True),
    "dev": (_dev, False),
}


def _usage_errors(args: argparse.Namespace) -> None:
    """What argparse cannot say by itself; each a usage error (exit 2 with the usage line)."""
    if args.command == "outbox" and args.action == "retry" and not args.uuids and not args.all_exhausted:
        SUBPARSERS["outbox_retry"].error("give UUIDs or --all-exhausted")
    if args.command == "dlq" and args.action in ("replay", "purge") and not args.ids and not args.all:
        SUBPARSERS[f"dlq_{args.action}"].error("give IDs or --all")
    if args.command == "dev":
        from chancepay.devrun import ALLOWED, parse_ports

        try:
            parse_ports(args.ports)
        except ValueError as exc:
            SUBPARSERS["dev"].error(f"--ports: {exc}")
        unknown = [r for r in args.roles.split(",") if r and r not in ALLOWED]
        if unknown:
            SUBPARSERS["dev"].error(f"--roles: unknown role(s) {', '.join(unknown)}; choose from {', '.join(ALLOWED)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _usage_errors(args)
    command, report_on_stdout = COMMANDS[args.command]
    stream = sys.stderr if report_on_stdout else sys.stdout
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        # A tagged JSON line like every other (under `make run` too), at the default level.
        chancelog.configure(args.command, "INFO", stream=stream)
        chancelog.get_logger().error("[FAILED TO START]", error=f"configuration error: {exc}")
        return 2
    chancelog.configure(args.command, settings.log_level, stream=stream)
    log = chancelog.get_logger()
    from chancepay.core.preflight import CannotProceed

    try:
        return command(settings, args)
    except CannotProceed as exc:
        log.error(exc.tag, **exc.fields)
        return exc.exit_code
    except (ConfigError, SchemaTooNew) as exc:
        log.error("[FAILED TO START]", error=str(exc))
        return 2
    except Exception as exc:
        log.exception("[FAILED TO START]", error=str(exc))
        return 1
