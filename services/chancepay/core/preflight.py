"""Before a command does its work, the servers it needs: answering, as its user, with the schema made.

An operator's command (load, audit, outbox, trace) that cannot reach what it needs must say so in
seconds, in one tagged line that names the URL it tried (password redacted), what the server
answered, and what to do — not after a whole load run, and never as a traceback. `CannotProceed`
carries that line; the CLI logs it and exits with its code.
"""

from __future__ import annotations

from typing import Any

from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseUnavailable, SchemaNotReady
from chancepay.core.errors import ChancePayError

DATABASE_TAG = "[FAILED TO REACH DATABASE]"
START_TAG = "[FAILED TO START]"
# MySQL/MariaDB error codes: the user or its password is refused, or it may not use the database.
ACCESS_DENIED = (1044, 1045, 1698)
UNKNOWN_DATABASE = 1049
MISSING_SCHEMA = (1146, 1054)
PROVISION = (
    "run `make run` (it provisions the databases and users), or `chancepay migrate` with "
    "CHANCEPAY_ADMIN_DB set to an admin URL"
)


class CannotProceed(ChancePayError):
    """An expected condition that stops a command: one tagged line (`tag` with `fields`), exit `exit_code`."""

    def __init__(self, tag: str, exit_code: int = 1, **fields: Any) -> None:
        super().__init__(fields.get("error") or tag)
        self.tag = tag
        self.exit_code = exit_code
        self.fields = fields


def error_code(exc: BaseException) -> int | None:
    """The server's error number behind a DatabaseUnavailable, if it answered with one."""
    cause = exc.__cause__
    args = getattr(cause, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def server_answer(exc: BaseException) -> str:
    """What the server said (its error number and text), without the caller's guesses."""
    args: tuple[Any, ...] = tuple(getattr(exc.__cause__, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[0]} {args[1]}"
    return str(exc) or type(exc).__name__


def database_hint(code: int | None, variable: str) -> str:
    if code in ACCESS_DENIED:
        return (
            f"the server refused this user or password: {PROVISION}; or set {variable} to the URL your "
            "databases were provisioned with"
        )
    if code == UNKNOWN_DATABASE:
        return f"the database does not exist: {PROVISION}"
    if code in MISSING_SCHEMA:
        return "the schema is missing or older than this code: run `chancepay migrate` (or `make run`)"
    return f"nothing usable answered there: start MariaDB (`make services`), or set {variable} to your database's URL"


async def check_database(url: DatabaseURL, variable: str, timeout: float) -> None:
    """The database answers as `url`'s user and its schema exists; else CannotProceed at once."""
    db = Database(url, pool_size=1, timeout=min(timeout, 5.0))
    try:
        await db.schema_version()
    except DatabaseUnavailable as exc:
        code = error_code(exc) if isinstance(exc, SchemaNotReady) else None
        raise CannotProceed(
            DATABASE_TAG,
            variable=variable,
            url=url.redacted(),
            answer=server_answer(exc),
            hint=database_hint(code, variable),
        ) from None
    finally:
        await db.close()


async def check_api(base_url: str, variable: str = "CHANCEPAY_ORCHESTRATOR_URL", timeout: float = 3.0) -> None:
    """The orchestrator at `base_url` answers its readiness check with 200; else CannotProceed."""
    import aiohttp  # here, not at the top: every command imports this module, one function needs it

    url = base_url.rstrip("/") + "/readyz"
    answer: str
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            if response.status == 200:
                return
            body = (await response.text(errors="replace"))[:300]
            answer = f"HTTP {response.status}: {body}"
            hint = (
                "the API answers but is not ready (its database or broker): see the roles' log lines, or "
                "`chancepay migrate`"
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        answer = str(exc) or type(exc).__name__
        hint = f"start the roles (`make run`), or point {variable} at the orchestrator's URL"
    raise CannotProceed(START_TAG, step="check the API", url=base_url, answer=answer, hint=hint)
