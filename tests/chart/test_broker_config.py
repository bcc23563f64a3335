"""The chart's RabbitMQ configuration as the broker itself reads it (podman, RabbitMQ 4.0 with the
rendered ConfigMap and StatefulSet): its memory is the container limit, not the host's RAM; the
quorum-queue WAL is sized from it; and a crash dump lands on the writable emptyDir although the
root filesystem is read-only."""

from __future__ import annotations

import re

from tests.support import chart
from tests.support.env import wait_until


def _term(text: str) -> str:
    return text.strip().strip('"')


def test_broker_takes_its_memory_from_the_limit_and_dumps_crashes_to_a_writable_volume(chart_install) -> None:
    install = chart_install()
    conf = install.rendered.get("ConfigMap", "-rabbitmq-config")["data"]["20-chancepay.conf"]
    limit = int(re.search(r"^total_memory_available_override_value = (\d+)$", conf, re.M).group(1))
    wal = int(re.search(r"^raft.wal_max_size_bytes = (\d+)$", conf, re.M).group(1))
    assert limit == 512 * 2**20 and wal == limit // 8
    install.servers.start()
    ctl = install.servers.rabbitmqctl

    # The host has more RAM than 512 MiB; the node must not see it.
    assert int(_term(ctl("eval", "vm_memory_monitor:get_total_memory()."))) == limit
    assert int(_term(ctl("eval", "vm_memory_monitor:get_memory_limit()."))) == int(limit * 0.6)
    assert _term(ctl("eval", "application:get_env(ra, wal_max_size_bytes).")) == f"{{ok,{wal}}}"

    # A VM halting with a slogan writes a crash dump: to ERL_CRASH_DUMP on the logs emptyDir.
    env = {
        e["name"]: e.get("value")
        for e in chart.pod_spec(install.rendered.get("StatefulSet", "-rabbitmq"))["containers"][0]["env"]
    }
    assert env["ERL_CRASH_DUMP"] == "/var/log/rabbitmq/erl_crash.dump"
    pod = install.servers.rabbitmq
    pod.exec("rabbitmqctl", "eval", 'erlang:halt("chancepay crash dump test").', timeout=60)
    wait_until(lambda: not pod.running(), 90, what="the broker to halt")
    dump = pod.workdir / "volumes" / "logs" / "erl_crash.dump"
    assert dump.is_file(), sorted(p.name for p in dump.parent.iterdir())
    head = dump.read_text(errors="replace")[:4000]
    assert head.startswith("=erl_crash_dump") and "Slogan: chancepay crash dump test" in head, head[:500]
    assert dump.stat().st_size <= int(env["ERL_CRASH_DUMP_BYTES"]) + 4096
