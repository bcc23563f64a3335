"""`make run` as a newcomer's fresh Debian 12 runs it: Debian's own Python 3.11 (no pyenv on PATH),
a runtime virtualenv with runtime dependencies only, the three roles under the supervisor on ports
of our choosing, a payment through them, Ctrl-C. And the supervisor's handling of a role that
cannot start (port in use): tagged, not restarted in a loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.env import ROLES, free_port, wait_until
from tests.support.servers import one_pass

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = one_pass("debian12", "make run uses this machine's own MariaDB and RabbitMQ: the debian12 pass runs it")


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def test_make_run_on_debian_python_3_11_moves_a_payment(env, tmp_path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 (Debian's) on this machine")
    venv = tmp_path / "venv"
    ports = {role: free_port() for role in (*ROLES, "auditor")}
    environ = {k: v for k, v in env.environ().items() if not k.startswith("PYENV")}
    environ.pop("RUN_PYTHON", None)
    environ.update(
        {
            "PATH": DEBIAN_PATH,
            "VENV": str(venv),
            "ORCHESTRATOR_PORT": str(ports["orchestrator"]),
            "SCANNER_PORT": str(ports["scanner"]),
            "WALLET_PORT": str(ports["wallet"]),
            "AUDITOR_PORT": str(ports["auditor"]),
        }
    )
    environ.pop("CHANCEPAY_ORCHESTRATOR_URL", None)
    environ.pop("CHANCEPAY_WALLET_URL", None)
    environ.pop("CHANCEPAY_PORT", None)
    environ["CHANCEPAY_ADMIN_DB"] = env.servers.admin_url
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(ROOT), "run"],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{ports['orchestrator']}"

    def output() -> str:
        return (tmp_path / "make-run.log").read_text(errors="replace")[-4000:]

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"make run exited {proc.returncode}:\n{output()}")
        return httpx.get(api + "/readyz", timeout=2).status_code == 200

    try:
        try:
            wait_until(up, 240, interval=1, what=f"make run's API on {api}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{output()}") from None
        python = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sys; print(sys.version_info[0], sys.version_info[1], sys.base_prefix)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert python[:2] == ["3", "11"] and python[2] == "/usr", f"not Debian's Python 3.11: {python}"
        r = httpx.post(api + "/payments", json={"cusId": "newcomer", "amount": "1.00"}, timeout=10)
        assert r.status_code == 202, r.text
        uuid = r.json()["uuid"]
        wait_until(
            lambda: httpx.get(f"{api}/payments/{uuid}", timeout=5).json()["status"] != "PENDING",
            60,
            what="the payment finalized by make run's roles",
        )
        auditor = f"http://127.0.0.1:{ports['auditor']}"
        wait_until(
            lambda: "chancepay_audit_last_pass_timestamp_seconds 1" in httpx.get(auditor + "/metrics", timeout=5).text,
            60,
            what="a pass of make run's auditor",
        )
        size = _size_mb(venv)
        print(f"\nmake run's runtime venv: {size:.1f} MB", file=sys.stderr)
        assert size < 80, f"runtime venv is {size:.1f} MB"
        freeze = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.util as u; print([m for m in ('pytest', 'helm_sdkpy', 'schemathesis',"
                " 'pymysql', 'pip') if u.find_spec(m)])",
            ],
            capture_output=True,
            text=True,
        ).stdout
        assert freeze.strip() == "[]", f"test tools in the runtime venv: {freeze}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole process group
        code = proc.wait(timeout=60)
        log.close()
    assert code in (0, 130, -signal.SIGINT), (code, output())
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after Ctrl-C"


def test_a_role_whose_port_is_taken_is_tagged_and_not_restarted(env) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        one = subprocess.run(
            [sys.executable, "-m", "chancepay", "orchestrator"],
            env=env.environ(CHANCEPAY_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert one.returncode == 2, one.stdout[-2000:]
        assert "[FAILED TO START HTTP SERVER]" in one.stdout and "Traceback" not in one.stdout + one.stderr
        sup = subprocess.run(
            [sys.executable, "-m", "chancepay", "dev", "--roles", "orchestrator", "--ports", f"orchestrator={port}"],
            env=env.environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sup.returncode == 2, sup.stdout[-2000:]
        assert sup.stdout.count("supervisor started role") == 1, "not restarted in a loop"
        assert '"[FAILED TO START]"' in sup.stdout and "not restarting" in sup.stdout
    finally:
        holder.close()
