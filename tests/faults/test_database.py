"""MariaDB unreachable for 30 s behind the fault proxy, for every role: the API answers 503
database_unavailable fast and writes nothing; scanner and wallet back off and recover; the online
auditor rides it out and afterwards agrees that nothing was lost."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.support.env import dead_lettered, outbox_depth, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.invariants import assert_auditor_agrees, assert_converged

OUTAGE_SECONDS = 30
HANG_BOUND = 10.0  # only a hang detector: the DB timeout below is 2 s


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_database_unreachable_for_30s(make_stack, env, mode: str) -> None:
    proxy = FaultProxy("127.0.0.1", env.mysql_port).start()
    try:
        s = make_stack(
            CHANCEPAY_ORCHESTRATOR_DB=env.orch_url(port=proxy.port),
            CHANCEPAY_WALLET_DB=env.wallet_url(port=proxy.port),
            CHANCEPAY_DB_TIMEOUT_SECONDS="2",
            CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05",
            CHANCEPAY_SCANNER_RETRY_BASE_SECONDS="0.2",
        ).start()
        # The online auditor as deployed, its database through the same proxy: it must ride out
        # the outage like the roles and, afterwards, agree that nothing was lost. Its grace is
        # longer than the outage (a payment held up by it is late, not lost).
        auditor = s.start_auditor(CHANCEPAY_AUDITOR_GRACE_SECONDS="120")
        accepted = s.pay_many(5, "before")
        s.wait_final(accepted, timeout=30)

        # Messages waiting for the wallet when the database goes away: pause it, let the scanner publish.
        s.wallet.signal(signal.SIGSTOP)
        queued = s.pay_many(10, "queued")
        accepted += queued
        wait_until(lambda: outbox_depth(env) == 0, 30, what="queued payments published")

        proxy.set_mode(mode)
        s.wallet.signal(signal.SIGCONT)
        fault_start = time.monotonic()
        answers = []
        while time.monotonic() - fault_start < OUTAGE_SECONDS:
            t0 = time.monotonic()
            r = httpx.post(s.orchestrator.url + "/payments", json={"cusId": "during", "amount": "1.00"}, timeout=30)
            elapsed = time.monotonic() - t0
            answers.append((r.status_code, r.json()["error"]["code"] if r.status_code != 202 else None, elapsed))
            if r.status_code == 202:
                accepted.append(r.json()["uuid"])
            t0 = time.monotonic()
            g = httpx.get(f"{s.orchestrator.url}/payments/{accepted[0]}", timeout=30)
            answers.append((g.status_code, g.json().get("error", {}).get("code"), time.monotonic() - t0))
            time.sleep(0.2)
        readiness = {name: httpx.get(role.url + "/readyz", timeout=30).status_code for name, role in s.roles.items()}
        proxy.set_mode("pass")

        assert len(answers) >= 10
        assert all(a[:2] == (503, "database_unavailable") for a in answers), answers
        assert max(a[2] for a in answers) < HANG_BOUND, answers
        assert readiness == {"orchestrator": 503, "scanner": 503, "wallet": 503, "auditor": 503}
        assert s.wallet.events("[FAILED TO DEDUCT IN WALLET]"), "the wallet met the outage"
        assert s.orchestrator.events("[FAILED TO REACH DATABASE]")
        assert auditor.events("[FAILED TO REACH DATABASE]"), "the auditor met the outage"

        # The other roles backed off and recover by themselves, without a restart.
        s.wait_final(accepted, timeout=60)
        assert s.scanner.running and s.wallet.running and s.orchestrator.running and auditor.running
        for role in s.roles.values():
            role.wait_ready(timeout=30)
        r = s.pay(cus_id="after")
        assert r.status_code == 202
        accepted.append(r.json()["uuid"])
        s.wait_final(accepted, timeout=30)
        # Nothing partial: exactly the accepted payments exist (no row from a 503), each deducted once.
        requests = {u for (u,) in env.orch_sql("SELECT uuid FROM request")}
        assert requests == set(accepted)
        assert_converged(s, accepted)
        assert dead_lettered(env) == 0, "nothing dead-lettered by the outage"
        assert_auditor_agrees(auditor)
    finally:
        proxy.stop()
