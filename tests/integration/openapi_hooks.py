"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.integration.openapi_hooks): what the OpenAPI
document cannot say in JSON Schema.

The one rule: a results batch names each uuid at most once (CONTRACT.md). `uniqueItems` in the
document refuses two identical items; two items with the same uuid and different `succeed`
values are schema-valid but answered 422 duplicate_uuid, so generated bodies that repeat a uuid
are not offered as valid data.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        uuids = [item.get("uuid") for item in body["results"] if isinstance(item, dict)]
        return len(uuids) == len(set(uuids))
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """An Idempotency-Key reused with another body is answered 422 idempotency_key_reused (the
    contract): a rule about earlier requests, which no schema can state. The fuzzer draws keys
    from a small space (its coverage phase from a handful of boundary values) and reuses them
    across unrelated bodies, so each valid key is made unique just before the call (still 1-255
    visible ASCII characters); invalid keys are sent as drawn."""
    import re
    import uuid

    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[!-~]{1,255}", key):
        suffix = "-" + uuid.uuid4().hex
        headers["Idempotency-Key"] = key[: 255 - len(suffix)] + suffix
        case.headers = headers
