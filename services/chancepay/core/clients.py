"""API clients (CONTRACT.md "Clients"): their keys, how a presented key is checked, how fast a
client may go.

A key is `cpk_<key id>_<secret>`: `cpk_` says what it is (a secret scanner or a person reading a
log recognises it), the key id (12 hex characters, public, shown by `chancepay clients list`)
names its row, the secret is `secrets.token_urlsafe(32)` (256 random bits). The database keeps
only the SHA-256 of the whole key. A fast hash is the right one here: bcrypt and argon2 are slow
on purpose so that guessing a *password* (a few dozen bits of human choice) from its stolen hash
takes years; a 256-bit random key cannot be guessed however fast the hash, and a slow hash would
cost every request tens of milliseconds of CPU. Checking a key: its id finds its row (one
indexed read, then cached), the hashes are compared in constant time.

The API must not pay a database round trip per request: a verified (or refused) key id is
remembered for CHANCEPAY_API_KEY_CACHE_SECONDS, so a revocation takes effect within that bound.
Concurrent requests with the same uncached key id share one read. Known and refused ids are
remembered apart, each bounded, least recently used out first; reads of ids that are not known
keys are rate-limited per process (LOOKUP_RATE), so made-up ids cannot buy database reads at will.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from chancepay.core import sql, trail
from chancepay.core.config import Settings
from chancepay.core.db import Database, fetchrow, fetchrows, is_duplicate_key
from chancepay.core.errors import ChancePayError
from chancepay.core.logging import get_logger

KEY_PREFIX = "cpk_"
KEY_ID_LENGTH = 12
_KEY = re.compile(r"cpk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
CLIENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NO_CLIENT = 0  # request.client_id of a payment made with the API open
CACHE_LIMIT = 10_000  # known key ids remembered at most; beyond it the least recently used goes
NEGATIVE_LIMIT = 10_000  # refused (unknown, revoked) key ids remembered at most, apart from known ones
# Reads of key ids that are not known keys (never seen, refused, or evicted), per process: a flood
# of made-up well-formed ids costs at most this many database reads a second; beyond it such a
# request is answered 429 without a read (a known key's refresh is never held back by it).
LOOKUP_RATE = 200.0
LOOKUP_BURST = 400.0


class ClientError(ChancePayError):
    """A `chancepay clients` request that cannot be done (bad or unknown name, unknown key)."""


class LookupsThrottled(ChancePayError):
    """Too many reads of unknown key ids in this process (LOOKUP_RATE): answer 429, read nothing."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many unrecognised API keys presented; retry in {retry_after} s")
        self.retry_after = retry_after


def new_key() -> tuple[str, str]:
    """(key id, key): a fresh key, its id embedded."""
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(presented: str) -> str | None:
    """The key id of a well-formed key, None for anything else."""
    m = _KEY.fullmatch(presented)
    return m.group(1) if m else None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <key>` header, None when there is none."""
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def check_name(name: str) -> str:
    if not CLIENT_NAME.fullmatch(name):
        raise ClientError(f"client name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return name


@dataclasses.dataclass(frozen=True)
class Client:
    id: int
    name: str


# --------------------------------------------------------------------------- rate limit
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one request takes one token."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, now

    def take(self, now: float) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per client, in this process (N orchestrators allow N times the rate).
    `rate` 0: no limit."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(burst, 1.0), clock
        self._buckets: dict[int, TokenBucket] = {}

    def retry_after(self, client: Client) -> int:
        """0 when `client` may go on; else whole seconds to wait (for Retry-After), at least 1."""
        if self.rate <= 0:
            return 0
        now = self.clock()
        bucket = self._buckets.get(client.id)
        if bucket is None:
            bucket = self._buckets[client.id] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait))


# --------------------------------------------------------------------------- verifying keys
@dataclasses.dataclass(frozen=True)
class _Entry:
    expires: float
    client: Client | None  # None: no such key id, or revoked
    hash: str


class Lru:
    """At most `limit` entries; a lookup makes an entry the most recent, a new one beyond the
    limit evicts the least recently used (never all at once)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._entries)


class KeyCache:
    """Presented key -> its client, or None (unknown, revoked, malformed). Known keys and refused
    key ids are kept apart, each an Lru, so made-up ids never push a known key out; reading an id
    that is not a known key takes a token from one bucket (LOOKUP_RATE), else LookupsThrottled."""

    def __init__(self, db: Database, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.db, self.ttl, self.clock = db, ttl, clock
        self.known, self.refused = Lru(CACHE_LIMIT), Lru(NEGATIVE_LIMIT)
        self.lookups = TokenBucket(LOOKUP_RATE, LOOKUP_BURST, clock())
        self._reading: dict[str, asyncio.Future[_Entry]] = {}

    async def client(self, presented: str | None) -> Client | None:
        key_id = key_id_of(presented) if presented else None
        if presented is None or key_id is None:
            return None
        entry = self.known.get(key_id) or self.refused.get(key_id)
        if entry is None or entry.expires <= self.clock():
            if (entry is None or entry.client is None) and key_id not in self._reading:
                wait = self.lookups.take(self.clock())
                if wait:
                    raise LookupsThrottled(max(1, math.ceil(wait)))
            entry = await self._read(key_id)
        if entry.client is None or not hmac.compare_digest(entry.hash, key_hash(presented)):
            return None
        return entry.client

    def _remember(self, key_id: str, entry: _Entry) -> None:
        remember, forget = (self.known, self.refused) if entry.client else (self.refused, self.known)
        forget.pop(key_id)
        remember.put(key_id, entry)

    async def _read(self, key_id: str) -> _Entry:
        pending = self._reading.get(key_id)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # the request that was reading went away, not this one
                    return await self._read(key_id)
                raise
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._reading[key_id] = future
        try:
            row = await self.db.fetchrow(sql.SELECT_KEY, (key_id,))
            entry = _entry(row, self.clock() + self.ttl)
            self._remember(key_id, entry)
            future.set_result(entry)
            return entry
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._reading[key_id]


def _entry(row: dict[str, Any] | None, expires: float) -> _Entry:
    if row is None or row["revoked_at"] is not None:
        return _Entry(expires, None, "")
    return _Entry(expires, Client(int(row["client_id"]), str(row["client_name"])), str(row["key_hash"]))


# --------------------------------------------------------------------------- `chancepay clients`
async def _client_id(cur: Any, name: str) -> int | None:
    await cur.execute(sql.SELECT_CLIENT, (name,))
    row = await fetchrow(cur)
    return None if row is None else int(row["id"])


async def add(db: Database, name: str) -> dict[str, str]:
    """A new key for `name` (the client made when new): {"client", "keyId", "key"}."""
    check_name(name)
    key_id, key = new_key()

    async def work(cur: Any) -> None:
        await cur.execute(sql.INSERT_CLIENT, (name,))
        client_id = await _client_id(cur, name)
        await cur.execute(sql.INSERT_KEY, (key_id, client_id, key_hash(key)))

    try:
        await db.run(work)
    except Exception as exc:
        if not is_duplicate_key(exc):  # a key id drawn twice (1 in 2^48): draw again
            raise
        return await add(db, name)
    return {"client": name, "keyId": key_id, "key": key}


async def register(db: Database, name: str, key: str) -> bool:
    """Make `key` (given, e.g. the chart's generated one) a key of `name`; idempotent: a key id
    already stored is left as it is (revoked stays revoked). True when it was added now."""
    check_name(name)
    key_id = key_id_of(key)
    if key_id is None:
        raise ClientError(f"the key is not a ChancePay API key ({KEY_PREFIX}<12 hex>_<43 urlsafe characters>)")

    async def work(cur: Any) -> bool:
        await cur.execute(sql.INSERT_CLIENT, (name,))
        client_id = await _client_id(cur, name)
        await cur.execute(sql.INSERT_KEY_IF_NEW, (key_id, client_id, key_hash(key)))
        return bool(cur.rowcount)

    return await db.run(work)


async def listing(db: Database) -> list[dict[str, Any]]:
    """Every client with its keys' ids and dates (never a key or its hash)."""

    def when(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    clients: dict[str, dict[str, Any]] = {}
    for row in await db.fetchrows(sql.LIST_CLIENT_KEYS):
        entry = clients.setdefault(
            row["name"], {"client": row["name"], "createdAt": when(row["client_created_at"]), "keys": []}
        )
        if row["key_id"] is not None:
            entry["keys"].append(
                {"keyId": row["key_id"], "createdAt": when(row["created_at"]), "revokedAt": when(row["revoked_at"])}
            )
    return list(clients.values())


async def revoke(db: Database, name: str, key_id: str | None) -> int:
    """Revoke one key of `name`, or all its keys; the number revoked now (0: already revoked)."""
    check_name(name)

    async def work(cur: Any) -> int:
        client_id = await _client_id(cur, name)
        if client_id is None:
            raise ClientError(f"no client {name!r}")
        if key_id is None:
            await cur.execute(sql.REVOKE_CLIENT_KEYS, (client_id,))
            return int(cur.rowcount)
        await cur.execute(sql.SELECT_CLIENT_KEY, (client_id, key_id))
        if not await fetchrows(cur):
            raise ClientError(f"client {name!r} has no key {key_id!r}")
        await cur.execute(sql.REVOKE_KEY, (client_id, key_id))
        return int(cur.rowcount)

    return await db.run(work)


async def clients_main(settings: Settings, action: str, name: str | None, key_id: str | None) -> int:
    """`chancepay clients add|list|revoke`: JSON lines on stdout; 0 when done, 1 when the name or
    key is unknown or invalid (one `[FAILED TO MANAGE CLIENTS]` line says why). `add` and `revoke`
    change state: each leaves an operator-trail row (core/trail.py; never the key itself)."""
    db = Database(settings.orchestrator_db_url, pool_size=1, timeout=settings.db_timeout)
    try:
        if action == "list":
            for entry in await listing(db):
                _print(entry)
            return 0
        assert name is not None
        await trail.require(db)
        return await _change(db, settings, action, name, key_id)
    finally:
        await db.close()


async def _change(db: Database, settings: Settings, action: str, name: str, key_id: str | None) -> int:
    """`add` or `revoke`, then its trail row (the action stands if the row cannot be written: exit 1)."""
    log = get_logger()
    arguments: dict[str, Any] = {"name": name} if action == "add" else {"name": name, "keyId": key_id}
    record = trail.Action(f"clients {action}", arguments)
    code = 0
    try:
        if action == "add":
            added = await add(db, name)
            _print(added)
            record.finish(0, {"keyId": added["keyId"]})  # the key is shown once, on stdout only
        else:
            count = await revoke(db, name, key_id)
            _print({"client": name, "keyId": key_id, "revoked": count})
            record.finish(0, {"revoked": count})
    except ClientError as exc:
        log.error("[FAILED TO MANAGE CLIENTS]", action=action, client=name, error=str(exc))
        record.finish(1, {"error": str(exc)})
        code = 1
    recorded = await trail.record_or_log(db, record, trail.operator(settings.operator), log)
    return code if recorded else 1


def _print(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    sys.stdout.flush()


async def register_bootstrap_key(settings: Settings) -> None:
    """migrate: CHANCEPAY_BOOTSTRAP_API_KEY registered for CHANCEPAY_BOOTSTRAP_CLIENT (idempotent:
    a key already there, revoked or not, is left as it is)."""
    db = Database(settings.orchestrator_db_url, pool_size=1, timeout=settings.db_timeout)
    try:
        added = await register(db, settings.bootstrap_client, settings.bootstrap_api_key)
    finally:
        await db.close()
    key_id = key_id_of(settings.bootstrap_api_key)
    get_logger().info(
        "bootstrap API key registered" if added else "bootstrap API key already there",
        client=settings.bootstrap_client,
        key_id=key_id,
    )
