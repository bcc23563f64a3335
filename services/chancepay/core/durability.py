"""The durability gate: are the settings every guarantee rests on what they must be?

"An acknowledged payment is never lost" holds only if the database flushed the commit before it
answered and the broker kept the message before it confirmed. The chart configures its own
servers that way; an external database (the README's production path) may not be, and nothing
else would notice. So each role reads, at start and on every new connection (and again on a
connection in use for core/db.py's VERIFY_EVERY_SECONDS), what its guarantees rest on:

database (`orchestrator_db`, `wallet_db`; `SELECT @@GLOBAL...`, core/sql.py DURABILITY_SETTINGS)
    `innodb_flush_log_at_trx_commit`: 1 (or MariaDB's 3, which also flushes at commit). 0 and 2
    leave up to a second of acknowledged commits in memory for a power loss or kernel crash.
    `sync_binlog`: 1 when the binary log is on (`log_bin`): with a binlog, a commit's recovery
    depends on the binlog reaching the disk. With the binlog off it is irrelevant: reported safe.
    `innodb_doublewrite`: ON (MySQL's DETECT_AND_RECOVER is the same). OFF or MariaDB's `fast`
    trust the storage not to tear a page on power loss (true of ZFS and some SSDs: then set the
    override below, knowingly). Not checked: a Galera cluster's own acknowledgement rules.
broker (`broker`)
    `queue_type` quorum and `queue_durable` true: what core/topology.py declares; a declare that
    succeeded means the server holds that queue so (a different existing queue is refused by the
    server). `publisher_confirms` on (scanner): the channel was opened with Confirm.Select.

The policy (`database_findings`, `broker_findings`, `decide`) is pure. Every reading sets
`chancepay_durability_safe{component,setting}` (1 safe, 0 unsafe). What an unsafe one does:
- `CHANCEPAY_ENV=prod`: refused. At start, the role exits 2 with one `[FAILED TO START]` line naming
  the setting, its value and the safe value (`DurabilityRefused`). Found later (a reconnect to a
  failed-over or reconfigured server), the connection is refused (`DurabilityUnsafe`, a
  DatabaseUnavailable): no new work on it, readiness fails, the API answers 503, one
  `[FAILED TO TRUST DATABASE]` line per change; when the setting is fixed the next connection
  passes and work resumes without a restart. Why refuse rather than log: the same server must not
  be refused at start but trusted after a reconnect (a pod restart would then flip the outcome in
  the middle of an incident), and a payment accepted on it could be lost without a trace.
- with `CHANCEPAY_ALLOW_UNSAFE_DURABILITY=1` (a person chose it), or under dev: one warning line
  per change, and the role goes on; the metric stays 0, so the alert still says so.
`chancepay migrate` and `reconcile` are not gated: migrate must be able to run to fix anything, and
the reconciler's writes are re-derived from the wallet's inbox on its next pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from chancepay.core import sql, topology
from chancepay.core.backoff import Backoff
from chancepay.core.config import Settings
from chancepay.core.db import Database, DatabaseUnavailable, fetchrow
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.preflight import START_TAG, CannotProceed
from chancepay.core.waiting import until_ok

OVERRIDE = "CHANCEPAY_ALLOW_UNSAFE_DURABILITY"
UNSAFE_TAG = "[FAILED TO TRUST DATABASE]"
WARNING = "durability setting unsafe"
EXIT_CANNOT_START = 2  # core/runner.py's: `chancepay dev` does not restart a role that exits with it


@dataclasses.dataclass(frozen=True)
class Finding:
    """One setting as read, and whether it is safe."""

    component: str
    setting: str
    value: str
    safe_value: str
    safe: bool

    def fields(self) -> dict[str, str]:
        return {
            "component": self.component,
            "setting": self.setting,
            "value": self.value,
            "safe_value": self.safe_value,
        }


class Action(enum.Enum):
    PROCEED = "proceed"  # every setting safe
    WARN = "warn"  # unsafe, but dev or the override: log it, go on
    REFUSE = "refuse"  # unsafe in prod: do not use it


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    return "unknown" if value is None else str(value)


def _on(value: Any) -> bool:
    return _text(value).upper() in ("1", "ON")


def database_findings(component: str, values: Mapping[str, Any]) -> list[Finding]:
    """The database's settings (as `SELECT @@GLOBAL.x AS x` returns them) judged."""
    flush = _text(values.get("innodb_flush_log_at_trx_commit"))
    sync = _text(values.get("sync_binlog"))
    binlog = _on(values.get("log_bin"))
    doublewrite = _text(values.get("innodb_doublewrite"))
    return [
        Finding(component, "innodb_flush_log_at_trx_commit", flush, "1", flush in ("1", "3")),
        Finding(component, "sync_binlog", sync if binlog else f"{sync} (log_bin OFF)", "1", sync == "1" or not binlog),
        Finding(
            component, "innodb_doublewrite", doublewrite, "ON", doublewrite.upper() in ("1", "ON", "DETECT_AND_RECOVER")
        ),
    ]


def broker_findings(queue_arguments: Mapping[str, Any], durable: bool, confirms: bool | None) -> list[Finding]:
    """What the broker was asked to hold, judged: a declare with these arguments succeeded.
    `confirms` None: this role does not publish."""
    queue_type = _text(queue_arguments.get("x-queue-type", "classic"))
    found = [
        Finding("broker", "queue_type", queue_type, "quorum", queue_type == "quorum"),
        Finding("broker", "queue_durable", str(durable).lower(), "true", durable),
    ]
    if confirms is not None:
        found.append(Finding("broker", "publisher_confirms", "on" if confirms else "off", "on", confirms))
    return found


def decide(findings: Iterable[Finding], *, env: str, allow_unsafe: bool) -> Action:
    """The policy: all safe → proceed; unsafe → refused in prod unless a person allowed it."""
    if all(f.safe for f in findings):
        return Action.PROCEED
    return Action.REFUSE if env == "prod" and not allow_unsafe else Action.WARN


class DurabilityUnsafe(DatabaseUnavailable):
    """A connection to a database whose durability settings are unsafe, refused (prod)."""

    def __init__(self, unsafe: list[Finding]) -> None:
        first = unsafe[0]
        super().__init__(
            f"{first.component}: {first.setting} is {first.value}, safe is {first.safe_value}; "
            f"refused under CHANCEPAY_ENV=prod (fix the server, or set {OVERRIDE}=1)"
        )
        self.unsafe = unsafe


class DurabilityRefused(CannotProceed):
    """At start: an unsafe setting under prod. One `[FAILED TO START]` line, exit 2."""

    def __init__(self, unsafe: list[Finding]) -> None:
        first = unsafe[0]
        more = [f.fields() for f in unsafe[1:]]
        super().__init__(
            START_TAG,
            EXIT_CANNOT_START,
            **first.fields(),
            error=f"{first.setting} is {first.value} on {first.component}; the safe value is {first.safe_value}",
            hint=f"set {first.setting}={first.safe_value} on the server, or {OVERRIDE}=1 to start knowingly unsafe",
            **({"also_unsafe": more} if more else {}),
        )
        self.unsafe = unsafe


class DurabilityGate:
    """One role's gate: judges readings, sets the metric, logs on change, refuses under prod."""

    def __init__(self, *, env: str, allow_unsafe: bool, metrics: Metrics, log: Any = None) -> None:
        self.env = env
        self.allow_unsafe = allow_unsafe
        self.metrics = metrics
        self.log = log or get_logger()
        self.databases: list[tuple[Database, str]] = []
        self._seen: dict[tuple[str, str], tuple[str, bool]] = {}

    @classmethod
    def of(cls, settings: Settings, metrics: Metrics) -> DurabilityGate:
        """The gate a role's composition root builds (CHANCEPAY_ENV, CHANCEPAY_ALLOW_UNSAFE_DURABILITY)."""
        return cls(env=settings.env, allow_unsafe=settings.allow_unsafe_durability, metrics=metrics)

    def judge(self, findings: list[Finding]) -> Action:
        """Record `findings`; raise DurabilityUnsafe when the policy refuses them."""
        action = decide(findings, env=self.env, allow_unsafe=self.allow_unsafe)
        for f in findings:
            self.metrics.durability_safe.labels(component=f.component, setting=f.setting).set(1 if f.safe else 0)
            key, now = (f.component, f.setting), (f.value, f.safe)
            if self._seen.get(key) == now:
                continue
            self._seen[key] = now
            if f.safe:
                self.log.info("durability setting safe", **f.fields())
            elif action is Action.REFUSE:
                self.log.error(UNSAFE_TAG, **f.fields(), hint=f"refused under CHANCEPAY_ENV=prod; or {OVERRIDE}=1")
            else:
                why = f"{OVERRIDE}=1" if self.env == "prod" else "CHANCEPAY_ENV=dev"
                self.log.warning(WARNING, **f.fields(), allowed_by=why)
        if action is Action.REFUSE:
            raise DurabilityUnsafe([f for f in findings if not f.safe])
        return action

    def watch(self, db: Database, component: str) -> DurabilityGate:
        """Check `db`'s settings on each of its new connections (core/db.py `verify`)."""

        async def verify(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute(sql.DURABILITY_SETTINGS)
                row = await fetchrow(cur)
            self.judge(database_findings(component, row or {}))

        db.verify = verify
        self.databases.append((db, component))
        return self

    def publisher_declared(self, channel: Any) -> None:
        """Publisher.on_declared (scanner): the topology declared on a channel with confirms."""
        self.broker(confirms=bool(channel.publisher_confirms))

    def consumer_declared(self, channel: Any) -> None:
        """Consumer.on_declared (wallet): the topology declared."""
        self.broker(confirms=None)

    def broker(self, *, confirms: bool | None) -> None:
        """After the topology was declared (core/topology.py) on a channel opened with
        `confirms` (None: a consumer): judge what the broker holds. Raises DurabilityRefused."""
        try:
            self.judge(broker_findings(topology.QUEUE_ARGUMENTS, topology.QUEUE_DURABLE, confirms))
        except DurabilityUnsafe as exc:
            raise DurabilityRefused(exc.unsafe) from None

    async def at_start(self, stop: asyncio.Event) -> bool:
        """Wait until each watched database was reached once and its settings read (as long
        as it takes: the role waits for its database anyway). False if stopped first; raises
        DurabilityRefused when the policy refuses them."""

        def unreached(exc: BaseException, delay: float) -> None:
            # The role's own loops and readiness say when its database is down: quiet here.
            if isinstance(exc, DurabilityUnsafe):
                raise DurabilityRefused(exc.unsafe) from None

        for db, _ in self.databases:

            async def probe(db: Database = db) -> None:
                async with db.transaction(probe=True) as cur:  # its new connection is verified first
                    await cur.execute(sql.PING)
                    await cur.fetchone()

            ok, _ = await until_ok(
                probe, backoff=Backoff(0.5, 5.0), on_failure=unreached, retry_on=DatabaseUnavailable, stop=stop
            )
            if not ok:
                return False
        return True

    def gated(self, worker: Callable[[asyncio.Event], Awaitable[None]] | None) -> Callable[[asyncio.Event], Any]:
        """The role's worker (for a role without one, the wait for the stop) beside the start-up
        check: the worker starts at once (its broker connection and waiting lines do not wait for
        the database), and a refusal by the check stops it and is raised (core/runner.py: exit 2)."""

        async def run(stop: asyncio.Event) -> None:
            work = asyncio.ensure_future(worker(stop) if worker is not None else stop.wait())
            check = asyncio.ensure_future(self.at_start(stop))
            await asyncio.wait({work, check}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                check.cancel()
                await asyncio.gather(check, return_exceptions=True)
                await work
                return
            refused = check.exception()
            if refused is not None:
                stop.set()  # nothing was done on a refused database: the worker just stops
                await asyncio.gather(work, return_exceptions=True)
                raise refused
            await work

        return run
