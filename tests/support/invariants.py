"""The contract's invariants after a test: the product's own checker (chancepay.audit), the one
`chancepay audit` and `chancepay load` use, over this Env's tables."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bench import sql as bench_sql
from chancepay.audit import InvariantReport, check_uuids
from chancepay.auditor.auditor import Auditor
from chancepay.auditor.policy import Finding
from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database
from chancepay.core.invariants import VIOLATION_KINDS
from chancepay.core.metrics import Metrics
from tests.support.env import Env, outbox_depth, pending_count, run_audit, wait_until
from tests.support.roles import Role, Stack


def check(env: Env, accepted: list[str] | None = None) -> InvariantReport:
    """The invariants over every payment in this Env (and the `accepted` ones, which must all have
    a request row), by chancepay.audit.check_uuids: the checker `chancepay load` uses, reading each
    schema through its own role's user."""
    return check_urls(env.orch_url(), env.wallet_url(), accepted)


def check_urls(orch_url: str, wallet_url: str, accepted: list[str] | None = None) -> InvariantReport:
    """`check` over the two schemas at these URLs (e.g. a played release's, from its Secret)."""

    async def go() -> InvariantReport:
        orch = Database(DatabaseURL.parse(orch_url), pool_size=1, timeout=30)
        wallet = Database(DatabaseURL.parse(wallet_url), pool_size=1, timeout=30)
        try:
            everything = {u for (u,) in await orch.fetchall(bench_sql.ALL_REQUEST_UUIDS)}
            everything |= {u for (u,) in await wallet.fetchall(bench_sql.ALL_INBOX_UUIDS)}
            return await check_uuids(orch, wallet, accepted or [], also=sorted(everything))
        finally:
            await orch.close()
            await wallet.close()

    return asyncio.run(go())


# The online audit's grace age in the fault tier: the role's default would call nothing lost in a
# test's lifetime; a minute is past every fault a scenario injects (and its convergence).
ONLINE_GRACE_SECONDS = 60.0


def check_online(env: Env) -> dict[str, Finding]:
    """What `chancepay auditor` would report over this Env, in process: the role's own Auditor
    (auditor/auditor.py) from a fresh checkpoint, pass after pass until it has caught up."""

    async def go() -> dict[str, Finding]:
        orch = Database(DatabaseURL.parse(env.orch_url()), pool_size=1, timeout=30)
        wallet = Database(DatabaseURL.parse(env.wallet_url()), pool_size=1, timeout=30)
        auditor = Auditor(orch, wallet, Metrics("auditor"), grace=ONLINE_GRACE_SECONDS, batch=10_000)
        try:
            while await auditor.pass_once() >= auditor.batch:
                pass
            return auditor.found
        finally:
            await orch.close()
            await wallet.close()

    return asyncio.run(go())


def assert_invariants(env: Env, accepted: list[str] | None = None, *, converged: bool = True) -> InvariantReport:
    """No violation (lost, duplicated, mismatched, orphan inbox row); once converged, also no
    inbox result still waiting to be mirrored into its request. The online audit's incremental
    checker (`chancepay auditor`'s, in process) must find nothing either."""
    report = check(env, accepted)
    assert report.violations == 0, f"invariants: {report.as_json()}"
    online = check_online(env)
    assert not online, f"online audit: {dict(list(online.items())[:5])}"
    if converged:
        assert not report.awaiting_mirror, f"inbox decided, request still pending: {report.awaiting_mirror[:5]}"
    return report


def assert_converged(stack: Stack, accepted: list[str] | None = None, timeout: float = 90) -> dict[str, Any]:
    """After the faults stopped: wait until the outbox is empty and no request is pending, then check
    the contract's invariants twice over: on every payment of this Env (check above) and as a live
    system (`chancepay audit`, which also flags outbox rows stuck without a recorded failure)."""
    env = stack.env
    wait_until(
        lambda: outbox_depth(env) == 0 and pending_count(env) == 0,
        timeout,
        interval=0.25,
        what=f"convergence (outbox={_safe(outbox_depth, env)}, pending={_safe(pending_count, env)})",
    )
    assert_invariants(env, accepted)
    code, report = run_audit(env)
    assert code == 0 and report["ok"], f"chancepay audit: {report}"
    return report


LAST_PASS = "chancepay_audit_last_pass_timestamp_seconds"
VIOLATIONS = "chancepay_audit_violations"
UNBALANCED = "chancepay_audit_unbalanced_amount"
AUDIT_TAG = "[FAILED TO AUDIT]"


def violations(auditor: Role) -> dict[str, float]:
    samples = auditor.metrics()
    return {kind: samples[(VIOLATIONS, (("kind", kind),))] for kind in VIOLATION_KINDS}


def next_pass(auditor: Role) -> float:
    """Wait for a pass that started after now; its end time."""
    before = auditor.metric(LAST_PASS)

    def ended() -> float:
        last = auditor.metric(LAST_PASS)
        return last if last > before else 0.0

    return float(wait_until(ended, 60, what="an audit pass"))


def assert_auditor_agrees(auditor: Role) -> None:
    """The online auditor (the role as deployed, not the checker in this process) after a fault:
    two whole passes since the pipeline converged find no violation, and it never reported one
    while the fault lasted (its grace must be set longer than the fault: a payment held up by the
    fault is late, not lost)."""
    next_pass(auditor)
    next_pass(auditor)
    assert violations(auditor) == dict.fromkeys(VIOLATION_KINDS, 0.0)
    assert auditor.metric(UNBALANCED) == 0
    assert not auditor.events(AUDIT_TAG), auditor.events(AUDIT_TAG)[:3]


def _safe(fn: Callable[[Env], Any], env: Env) -> Any:
    try:
        return fn(env)
    except Exception as exc:  # only for messages
        return repr(exc)
