"""Versioned schema migrations: what each version of each schema is. Declarations only; the
runner is core/schema.py (`chancepay migrate`).

Rules for a new migration (README "Changing the schema"):
- append it with the next version number; never edit or reorder a released one;
- expand first, contract later: a migration must keep the previous release's code working (add a
  nullable column or a new table; drop or rename only in a later release, once no running code
  uses the old shape), because during a rolling update both run against the same schema;
- make each statement idempotent (IF NOT EXISTS, or an `unless` check): a migrate killed between
  a statement and its version row runs it again;
- a contraction (it drops or renames what an earlier release reads) sets `oldest_code` to the
  latest version the oldest release that still runs on it knows; an expansion leaves it 0.
  `schema_version.oldest_code` keeps it, so an earlier release rolled back onto the schema
  (`helm rollback`) knows whether it may run: its migrate finds nothing to do and its roles are
  Ready on a schema that only grew, and both refuse one that was contracted past them.
Roles report not-ready until their schema is at their latest version, or newer with no newer version
naming code past them (core/db.py schema_ready, `runs_on` below), so a rolling
update waits for the migrate Job instead of serving with a schema it does not know.
"""

from __future__ import annotations

import dataclasses

from chancepay.core import sql
from chancepay.core.errors import ChancePayError


@dataclasses.dataclass(frozen=True)
class Step:
    """One statement of a migration with its own guard, for a migration of several DDL statements
    (each DDL commits on its own: a migrate stopped between two of them runs the rest next time)."""

    statement: str
    unless_column: tuple[str, str] | None = None  # (table, column): skip when it exists
    unless_index: tuple[str, str] | None = None  # (table, index): skip when it exists
    if_index: tuple[str, str] | None = None  # (table, index): skip when it is gone (a DROP done)
    # Run instead when the server refuses `statement`'s ALGORITHM (errors 1845/1846).
    otherwise: str | None = None


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str | Step, ...]
    # (table, column): skip the statements when this column already exists (ALTER TABLE ... ADD
    # COLUMN has no IF NOT EXISTS on MySQL 8.4).
    unless_column: tuple[str, str] | None = None
    # (table, index): skip the statements when this index already exists (ADD KEY IF NOT EXISTS is
    # MariaDB's only).
    unless_index: tuple[str, str] | None = None
    # The oldest code that still runs once this migration is applied, named by the latest schema
    # version that code knows: 0 for an expansion (every earlier release keeps working).
    oldest_code: int = 0


# The version (in both schemas) that adds schema_version.oldest_code: a migration with oldest_code
# must come after it.
FLOOR_SINCE = 5
FLOOR_DESCRIPTION = "schema_version.oldest_code: which earlier release may run on this schema (a rollback)"

ORCHESTRATOR: tuple[Migration, ...] = (
    Migration(1, "request and outbox", sql.ORCHESTRATOR_V1),
    Migration(2, "operator_action: the operator trail (append-only)", sql.ORCHESTRATOR_V2),
    Migration(
        3,
        "api_client and api_key; request.client_id, idempotency keys unique per client",
        (
            *sql.ORCHESTRATOR_V3,
            Step(sql.V3_ADD_CLIENT_ID, unless_column=("request", "client_id"), otherwise=sql.V3_ADD_CLIENT_ID_INPLACE),
            Step(sql.V3_ADD_UNIQUE_PER_CLIENT, unless_index=("request", "uq_request_idempotency_key_client")),
            Step(sql.V3_DROP_UNIQUE_KEY, if_index=("request", "uq_request_idempotency_key")),
        ),
    ),
    Migration(
        4,
        "request created_at index: the online audit's reads",
        sql.ORCHESTRATOR_V4,
        unless_index=("request", "ix_request_created"),
    ),
    Migration(FLOOR_SINCE, FLOOR_DESCRIPTION, sql.ADD_SCHEMA_FLOOR, unless_column=("schema_version", "oldest_code")),
)
WALLET: tuple[Migration, ...] = (
    Migration(1, "inbox", sql.WALLET_V1),
    Migration(2, "pending_callback: results the wallet still has to deliver", sql.WALLET_V2),
    Migration(3, "dead_letter: the DLQ's messages, kept by the wallet", sql.WALLET_V3),
    Migration(
        4, "inbox created_at index: the online audit's reads", sql.WALLET_V4, unless_index=("inbox", "ix_inbox_created")
    ),
    Migration(FLOOR_SINCE, FLOOR_DESCRIPTION, sql.ADD_SCHEMA_FLOOR, unless_column=("schema_version", "oldest_code")),
)


class SchemaTooNew(ChancePayError, RuntimeError):
    """The database is at a version this code does not know: a newer release migrated it."""


def latest(migrations: tuple[Migration, ...]) -> int:
    return max(m.version for m in migrations)


def pending(current: int, migrations: tuple[Migration, ...], newer_floor: int | None = None) -> list[Migration]:
    """The migrations to apply to a schema at `current`, in order. Pure.

    A schema newer than this code (a newer release migrated it; this one was rolled back onto it):
    `newer_floor` is the highest `oldest_code` of the versions this code does not know (None when
    the schema cannot say). At most this code's latest version: no newer version dropped what this
    code uses, this code runs on it and there is nothing to do here. Otherwise SchemaTooNew."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... in order: {versions}")
    mine = latest(migrations)
    if current > mine:
        if newer_floor is not None and newer_floor <= mine:
            return []
        why = (
            f"a newer release's migration needs code that knows version {newer_floor} or later"
            if newer_floor is not None
            else "the schema does not say which earlier release may run on it"
        )
        raise SchemaTooNew(
            f"the schema is at version {current}, newer than this code knows ({mine}), and {why}: "
            "run the newer release's migrate, or roll this release forward"
        )
    return [m for m in migrations if m.version > current]


def runs_on(required: int, version: int, floor: int) -> bool:
    """Readiness: code that knows up to schema version `required` runs on a schema at `version`
    whose newer versions' highest `oldest_code` is `floor`. Pure."""
    return version == required or (version > required and floor <= required)
