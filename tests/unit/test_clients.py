"""core/clients.py's pure parts: the key's shape, the bearer header, the token bucket and the
per-client limiter on a fake clock, and the key cache on a fake database (one read per key id
per CACHE_SECONDS, revoked and wrong keys refused, concurrent look-ups sharing one read; known and
refused ids bounded apart, least recently used out first; unknown ids' reads rate-limited)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from chancepay.core import clients
from chancepay.core.clients import (
    Client,
    KeyCache,
    LookupsThrottled,
    Lru,
    RateLimiter,
    TokenBucket,
    bearer,
    key_hash,
    key_id_of,
    new_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_key_carries_its_id_and_256_random_bits() -> None:
    key_id, key = new_key()
    assert key.startswith(f"cpk_{key_id}_") and len(key_id) == 12 and len(key) == 4 + 12 + 1 + 43
    assert key_id_of(key) == key_id
    assert new_key() != new_key()


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "cpk_",
        "not-a-key",
        f"cpk_{'A' * 12}_{'x' * 43}",  # the id is lowercase hex
        f"cpk_{'a' * 11}_{'x' * 44}",
        f"cpk_{'a' * 12}_{'x' * 42}",
        f"cpk_{'a' * 12}_{'x' * 44}",
        f"cpk_{'a' * 12}_{'x' * 42}=",
        f"xpk_{'a' * 12}_{'x' * 43}",
        f"cpk_{'a' * 12}_{'x' * 43}\n",
    ],
)
def test_anything_but_a_well_formed_key_has_no_key_id(presented: str) -> None:
    assert key_id_of(presented) is None


def test_the_bearer_credential() -> None:
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer(None) is None and bearer("") is None and bearer("Bearer ") is None and bearer("Basic abc") is None


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == pytest.approx(0.5), "one token comes in 1/rate s"
    assert bucket.take(0.25) == pytest.approx(0.25), "a refusal takes nothing"
    assert bucket.take(0.5) == 0
    assert bucket.take(100) == 0 and bucket.tokens == pytest.approx(2), "never more than the burst saved up"


def test_the_limiter_is_per_client_and_answers_whole_seconds() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.5, burst=1, clock=clock)
    alice, bob = Client(1, "alice"), Client(2, "bob")
    assert limiter.retry_after(alice) == 0
    assert limiter.retry_after(alice) == 2, "one token in 2 s"
    assert limiter.retry_after(bob) == 0, "another client's bucket is its own"
    clock.now += 1.5
    assert limiter.retry_after(alice) == 1, "0.5 s left, at least 1"
    clock.now += 0.5
    assert limiter.retry_after(alice) == 0


def test_a_rate_of_zero_is_no_limit() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.retry_after(Client(1, "a")) == 0 for _ in range(10_000))


class KeyTable:
    """A Database for KeyCache: fetchrow(SELECT_KEY, (key_id,)) answers from `rows`, counting reads;
    `gate` (when set) holds every read until released."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    def add(self, client: Client) -> str:
        key_id, key = new_key()
        self.rows[key_id] = {
            "key_id": key_id,
            "key_hash": key_hash(key),
            "revoked_at": None,
            "client_id": client.id,
            "client_name": client.name,
        }
        return key

    async def fetchrow(self, statement: str, args: Any = None) -> dict[str, Any] | None:
        assert statement == clients.sql.SELECT_KEY
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        row = self.rows.get(args[0])
        return dict(row) if row else None


def test_a_checked_key_is_read_once_per_ttl_and_a_revocation_shows_within_it() -> None:
    table, clock = KeyTable(), Clock()
    cache = KeyCache(table, ttl=5, clock=clock)  # type: ignore[arg-type]
    alice = Client(7, "alice")
    key = table.add(alice)

    async def go() -> None:
        assert [await cache.client(key) for _ in range(100)] == [alice] * 100
        assert table.reads == 1
        table.rows[key_id_of(key)]["revoked_at"] = "now"  # type: ignore[index]
        clock.now += 4.9
        assert await cache.client(key) == alice, "still within the bound"
        clock.now += 0.2
        assert await cache.client(key) is None and table.reads == 2, "refused once the bound passed"

    asyncio.run(go())


def test_a_wrong_secret_an_unknown_id_and_garbage_are_refused() -> None:
    table = KeyTable()
    cache = KeyCache(table, ttl=5)  # type: ignore[arg-type]
    key = table.add(Client(1, "alice"))
    wrong = key[:17] + secrets.token_urlsafe(32)
    unknown = f"cpk_{'0' * 12}_{secrets.token_urlsafe(32)}"

    async def go() -> None:
        assert await cache.client(key) is not None
        assert await cache.client(wrong) is None, "the id is right, the hash is not"
        assert await cache.client(unknown) is None and await cache.client(unknown) is None
        assert await cache.client("garbage") is None and await cache.client(None) is None

    asyncio.run(go())
    assert table.reads == 2, "garbage costs no read; an unknown id is remembered too"


def test_concurrent_requests_with_one_uncached_key_share_one_read() -> None:
    table = KeyTable()
    cache = KeyCache(table, ttl=5)  # type: ignore[arg-type]
    alice = Client(1, "alice")
    key = table.add(alice)

    async def go() -> list[Client | None]:
        table.gate = asyncio.Event()
        waiting = [asyncio.create_task(cache.client(key)) for _ in range(50)]
        await asyncio.sleep(0)
        table.gate.set()
        return await asyncio.gather(*waiting)

    assert asyncio.run(go()) == [alice] * 50
    assert table.reads == 1


def test_the_least_recently_used_entry_goes_first_never_all_at_once() -> None:
    lru = Lru(3)
    entry = clients._Entry(1.0, None, "")
    for key in "abc":
        lru.put(key, entry)
    assert lru.get("a") is entry  # a is now the most recent
    lru.put("d", entry)
    assert lru.keys() == ["c", "a", "d"]
    assert lru.get("b") is None, "b, the least recently used, went; the others stayed"
    lru.put("e", entry)
    assert lru.keys() == ["a", "d", "e"]


def test_made_up_key_ids_never_push_a_known_key_out() -> None:
    table, clock = KeyTable(), Clock()
    cache = KeyCache(table, ttl=5, clock=clock)  # type: ignore[arg-type]
    cache.refused.limit = 10
    cache.lookups = TokenBucket(rate=1e9, burst=1e9, now=0)  # this test is about the caches only
    alice = Client(7, "alice")
    key = table.add(alice)

    async def go() -> None:
        assert await cache.client(key) == alice
        for _ in range(50):
            assert await cache.client(f"cpk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None
        reads = table.reads
        assert await cache.client(key) == alice and table.reads == reads, "alice still cached"
        assert len(cache.refused.keys()) == 10, "the refused ids are bounded apart"

    asyncio.run(go())


def test_a_refused_id_is_remembered_for_the_ttl_then_read_again() -> None:
    table, clock = KeyTable(), Clock()
    cache = KeyCache(table, ttl=5, clock=clock)  # type: ignore[arg-type]
    unknown = f"cpk_{'1' * 12}_{secrets.token_urlsafe(32)}"

    async def go() -> None:
        assert await cache.client(unknown) is None and await cache.client(unknown) is None
        assert table.reads == 1 and cache.refused.keys() == ["1" * 12] and cache.known.keys() == []
        clock.now += 5.1
        assert await cache.client(unknown) is None and table.reads == 2

    asyncio.run(go())


def test_unknown_ids_beyond_the_lookup_rate_are_throttled_without_a_read() -> None:
    table, clock = KeyTable(), Clock()
    cache = KeyCache(table, ttl=5, clock=clock)  # type: ignore[arg-type]
    cache.lookups = TokenBucket(rate=2, burst=3, now=clock())
    alice = Client(7, "alice")
    key = table.add(alice)

    def made_up() -> str:
        return f"cpk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"

    async def go() -> None:
        assert await cache.client(key) == alice  # one token
        assert await cache.client(made_up()) is None and await cache.client(made_up()) is None
        with pytest.raises(LookupsThrottled) as throttled:
            await cache.client(made_up())
        assert throttled.value.retry_after == 1 and table.reads == 3, "refused without a read"
        clock.now += 5.1  # alice's entry expired; the bucket refilled 3 tokens (burst)
        for _ in range(3):
            await cache.client(made_up())
        assert await cache.client(key) == alice, "a known key's refresh is never held back"
        assert table.reads == 7

    asyncio.run(go())
