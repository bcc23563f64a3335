"""Message authentication: `x-chancepay-signature: v1=<hex HMAC-SHA256 of the exact body bytes>`.

Only the scanner (which publishes what the orchestrator committed to its outbox) and the wallet
hold the key. A message the wallet cannot verify with the current key or, during a rotation, the
previous one, is treated as corrupt: tagged, dead-lettered, nothing deducted. Pure functions.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

HEADER = "x-chancepay-signature"
SCHEME = "v1="


def sign(body: bytes, key: str) -> str:
    return SCHEME + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, headers: Mapping[str, Any] | None, keys: tuple[str, ...]) -> str | None:
    """None when the body carries a valid signature under one of `keys`; otherwise why not."""
    value = (headers or {}).get(HEADER)
    if value is None:
        return f"no {HEADER} header"
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or not value.startswith(SCHEME):
        return f"{HEADER} is not a {SCHEME}... signature"
    for key in keys:
        if key and hmac.compare_digest(value, sign(body, key)):
            return None
    return f"{HEADER} does not match the body under the current or previous key"
