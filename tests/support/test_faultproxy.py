"""Unit tests of the project's TCP fault proxy (tests/support/faultproxy.py).

Real sockets on 127.0.0.1 only: a threaded echo server as the upstream, plain blocking
clients, plus the local MariaDB (3306) and RabbitMQ (5672) when they are up.  Every wait
is a poll with a deadline or a socket timeout; timing is only ever asserted as a lower
bound.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.faultproxy import FaultProxy  # noqa: E402

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
IO_TIMEOUT = 5.0  # generous per-operation socket timeout; a pass never waits for it
SILENCE = 0.3  # how long a blackholed read must stay silent


# --------------------------------------------------------------------------- helpers
class EchoServer:
    """Echoes every chunk; on the client's EOF it sends b"|EOF" and half-closes too."""

    TRAILER = b"|EOF"

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self.accepted += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(self.TRAILER)
                    conn.shutdown(socket.SHUT_WR)
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # shutdown() wakes the blocked accept() on Linux; close afterwards
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    p = FaultProxy(HOST, echo.port)
    p.start()
    yield p
    p.stop()


def connect(proxy: FaultProxy, timeout: float = IO_TIMEOUT) -> socket.socket:
    s = socket.create_connection(proxy.address, timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(s: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


def round_trip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    return recv_exact(s, len(payload))


def poll(predicate, timeout: float = IO_TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def assert_silent(s: socket.socket, seconds: float = SILENCE) -> None:
    """Nothing arrives (no data, no EOF, no reset) within ``seconds``."""
    s.settimeout(seconds)
    with pytest.raises(TimeoutError):
        s.recv(1)
    s.settimeout(IO_TIMEOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def reachable(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- modes
def test_pass_round_trip_and_counters(proxy, echo):
    assert proxy.port > 0 and proxy.address == (HOST, proxy.port)
    assert proxy.mode == "pass"
    with connect(proxy) as s:
        assert round_trip(s, b"hello proxy") == b"hello proxy"
        assert proxy.wait_for_connections(1, timeout=IO_TIMEOUT) == 1
        stats = proxy.stats()
        assert stats["bytes_to_upstream"] == 11
        assert stats["bytes_to_client"] == 11
        assert stats["connections_active"] == 1
    proxy.wait_for_active(0)
    assert proxy.stats()["connections_accepted"] == 1


def test_half_close_is_forwarded_both_ways(proxy):
    with connect(proxy) as s:
        s.sendall(b"request body")
        s.shutdown(socket.SHUT_WR)  # our EOF must reach the echo server ...
        # ... whose reply, sent after it saw EOF, must still come back, then its EOF
        assert recv_until_eof(s) == b"request body" + EchoServer.TRAILER
    proxy.wait_for_active(0)


def test_large_transfer_with_backpressure(proxy):
    payload = os.urandom(8 * 1024 * 1024)
    with connect(proxy) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = recv_exact(s, len(payload))
        sender.join(timeout=IO_TIMEOUT)
        assert got == payload
        assert proxy.bytes_to_upstream == len(payload)
        assert proxy.bytes_to_client == len(payload)


def test_many_concurrent_connections(proxy, echo):
    n = 200
    socks = [connect(proxy) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"conn-%04d;" % i)
        for i, s in enumerate(socks):
            assert recv_exact(s, 10) == b"conn-%04d;" % i
        assert proxy.wait_for_connections(n) == n
        assert proxy.connections_active == n
        assert echo.accepted == n
    finally:
        for s in socks:
            s.close()
    proxy.wait_for_active(0)


def test_delay_adds_latency_in_both_directions(proxy):
    delay = 0.15

    def timed_round_trip(s: socket.socket, payload: bytes) -> float:
        t0 = time.monotonic()
        assert round_trip(s, payload) == payload
        return time.monotonic() - t0

    with connect(proxy) as existing:
        assert round_trip(existing, b"warm") == b"warm"
        proxy.set_mode("delay", seconds=delay)
        assert proxy.mode == "delay" and proxy.params == {"seconds": delay}
        # one delay on the way up and one on the way down; a lower bound only (the
        # few-ms allowance covers the event loop's clock rounding)
        assert timed_round_trip(existing, b"ping") >= 2 * delay - 0.005
        with connect(proxy) as fresh:
            assert timed_round_trip(fresh, b"pong") >= 2 * delay - 0.005
        proxy.set_mode("pass")
        assert round_trip(existing, b"fast again") == b"fast again"


def test_blackhole_silences_existing_and_new_connections(proxy, echo):
    with connect(proxy) as existing:
        assert round_trip(existing, b"before") == b"before"
        proxy.set_mode("blackhole")
        existing.sendall(b"held")
        assert_silent(existing)

        fresh = connect(proxy)  # the TCP handshake with the proxy still completes
        with fresh:
            fresh.sendall(b"new")
            assert_silent(fresh)
            proxy.wait_for_connections(2)
            assert echo.accepted == 1, "a blackholed connection must not reach the upstream"

            proxy.set_mode("pass")  # the partition heals: held bytes are delivered
            assert recv_exact(existing, 4) == b"held"
            assert recv_exact(fresh, 3) == b"new"
            assert round_trip(fresh, b"more") == b"more"
        assert echo.accepted == 2


def test_blackhole_holds_eof_too(proxy):
    with connect(proxy) as s:
        assert round_trip(s, b"x") == b"x"
        proxy.set_mode("blackhole")
        s.shutdown(socket.SHUT_WR)
        assert_silent(s)  # neither the trailer nor EOF comes back while partitioned
        proxy.set_mode("pass")
        assert recv_until_eof(s) == EchoServer.TRAILER


def test_reset_mode_rsts_existing_and_new_connections(proxy):
    existing = connect(proxy)
    with existing:
        assert round_trip(existing, b"alive") == b"alive"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            existing.recv(1)

    for _ in range(3):
        with pytest.raises(ConnectionResetError):
            with connect(proxy) as s:
                s.sendall(b"hello")
                s.recv(1)
    assert proxy.stats()["resets_sent"] >= 4
    # The proxy's thread forgets a reset connection just after sending the RST: poll, do not race.
    poll(lambda: proxy.connections_active == 0, what="reset connections forgotten")

    proxy.set_mode("pass")
    with connect(proxy) as s:
        assert round_trip(s, b"recovered") == b"recovered"


def test_reset_all_rsts_current_connections_and_keeps_mode(proxy):
    socks = [connect(proxy) for _ in range(5)]
    try:
        for s in socks:
            assert round_trip(s, b"a") == b"a"
        assert proxy.reset_all() == 5
        for s in socks:
            with pytest.raises(ConnectionResetError):
                s.recv(1)
    finally:
        for s in socks:
            s.close()
    assert proxy.mode == "pass"
    with connect(proxy) as s:
        assert round_trip(s, b"still passing") == b"still passing"


def test_refuse_then_pass_listens_again_on_the_same_port(proxy):
    port = proxy.port
    existing = connect(proxy)
    with existing:
        assert round_trip(existing, b"up") == b"up"
        proxy.set_mode("refuse")
        assert proxy.stats()["listening"] is False
        with pytest.raises(ConnectionResetError):
            existing.recv(1)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=IO_TIMEOUT)

    proxy.set_mode("pass")
    assert proxy.port == port
    with connect(proxy) as s:
        assert round_trip(s, b"back") == b"back"

    # and a second cycle, while the refused port has TIME_WAIT leftovers
    proxy.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    proxy.set_mode("delay", seconds=0.01)
    with connect(proxy) as s:
        assert round_trip(s, b"again") == b"again"
    assert proxy.port == port


def test_refuse_can_keep_existing_connections(proxy):
    port = proxy.port
    with connect(proxy) as existing:
        assert round_trip(existing, b"1") == b"1"
        proxy.set_mode("refuse", reset_existing=False)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        assert round_trip(existing, b"2") == b"2"
        # re-listen on the same port although an accepted socket still uses it
        proxy.set_mode("pass")
        with connect(proxy) as s:
            assert round_trip(s, b"3") == b"3"
        assert round_trip(existing, b"4") == b"4"


def test_unreachable_upstream_resets_the_client():
    with FaultProxy(HOST, free_port()) as p:
        with pytest.raises(ConnectionResetError):
            with connect(p) as s:
                s.sendall(b"anyone?")
                s.recv(1)
        p.wait_for(lambda st: st["upstream_connect_failures"] == 1)


def test_invalid_modes_are_rejected(proxy):
    with pytest.raises(ValueError):
        proxy.set_mode("chaos")
    with pytest.raises(ValueError):
        proxy.set_mode("delay")
    with pytest.raises(ValueError):
        proxy.set_mode("delay", seconds=-1)
    with pytest.raises(ValueError):
        proxy.set_mode("pass", seconds=1)
    assert proxy.mode == "pass"


def test_stop_closes_everything_and_leaks_nothing(echo):
    fds_before = open_fds()
    p = FaultProxy(HOST, echo.port)
    p.start()
    port = p.port
    live = [connect(p) for _ in range(10)]
    for s in live:
        assert round_trip(s, b"x") == b"x"
    p.set_mode("blackhole")
    pending = connect(p)  # accepted, never dialled upstream
    p.wait_for_connections(11)
    p.stop()
    p.stop()  # idempotent
    assert not p.running
    for s in live + [pending]:
        s.settimeout(IO_TIMEOUT)
        try:
            assert s.recv(65536) in (b"", EchoServer.TRAILER)
        except ConnectionResetError:
            pass
        s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    assert not [t for t in threading.enumerate() if t.name.startswith(("faultproxy", "asyncio_"))]
    poll(lambda: open_fds() <= fds_before, what=f"fds back to {fds_before} (now {open_fds()})")

    # a stopped proxy can be started again, on the same port
    with p:
        assert p.port == port
        with connect(p) as s:
            # the blackhole mode survives the restart: a restart is not a heal
            s.sendall(b"y")
            assert_silent(s)
            p.set_mode("pass")
            assert recv_exact(s, 1) == b"y"


# --------------------------------------------------------------------------- real upstreams
@pytest.mark.skipif(not reachable(3306), reason="no MariaDB on 127.0.0.1:3306")
def test_proxies_a_real_mariadb_handshake():
    with FaultProxy(HOST, 3306) as p:
        for _ in range(3):  # a small pool's worth of connections
            with connect(p) as s:
                header = recv_exact(s, 4)
                length = int.from_bytes(header[:3], "little")
                assert header[3] == 0  # sequence id of the server greeting
                payload = recv_exact(s, length)
                assert payload[0] == 10, payload[:16]  # protocol version 10
                version = payload[1 : payload.index(b"\x00", 1)]
                assert version[:1].isdigit(), version
        p.wait_for_connections(3)
        p.wait_for_active(0)

        p.set_mode("blackhole")
        with connect(p) as s:
            assert_silent(s)  # no greeting through a partition
        p.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            connect(p)


@pytest.mark.skipif(not reachable(5672), reason="no RabbitMQ on 127.0.0.1:5672")
def test_proxies_a_real_rabbitmq_protocol_header():
    with FaultProxy(HOST, 5672) as p:
        with connect(p) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            frame_header = recv_exact(s, 7)
            assert frame_header[0] == 1  # method frame
            assert int.from_bytes(frame_header[1:3], "big") == 0  # channel 0
            size = int.from_bytes(frame_header[3:7], "big")
            body = recv_exact(s, size + 1)
            assert body[:4] == b"\x00\x0a\x00\x0a"  # connection.start
            assert body[-1] == 0xCE  # frame end
            p.reset_all()
            with pytest.raises(ConnectionResetError):
                s.recv(1)


# --------------------------------------------------------------------------- CLI
def _http(control: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    host, port = control.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=IO_TIMEOUT)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_cli_switches_modes_over_http_and_stdin(echo):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.faultproxy",
            "--listen",
            f"{HOST}:0",
            "--upstream",
            f"{HOST}:{echo.port}",
            "--control",
            f"{HOST}:0",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "faultproxy.ready"
        host, port = ready["listen"].rsplit(":", 1)
        addr = (host, int(port))

        def cmd(line: str) -> dict:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        with socket.create_connection(addr, timeout=IO_TIMEOUT) as s:
            s.settimeout(IO_TIMEOUT)
            assert round_trip(s, b"via cli") == b"via cli"

        status, body = _http(ready["control"], "POST", "/mode", {"mode": "refuse"})
        assert status == 200 and body["mode"] == "refuse"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr, timeout=IO_TIMEOUT)

        assert cmd("delay 0.05") == {"ok": True, "mode": "delay", "params": {"seconds": 0.05}, "command": "delay 0.05"}
        with socket.create_connection(addr, timeout=IO_TIMEOUT) as s:
            s.settimeout(IO_TIMEOUT)
            assert round_trip(s, b"same port") == b"same port"

        assert cmd("bogus")["ok"] is False
        status, body = _http(ready["control"], "POST", "/mode?mode=delay&seconds=-3")
        assert status == 400 and body["ok"] is False
        status, body = _http(ready["control"], "POST", "/mode/pass")
        assert status == 200 and body["mode"] == "pass"
        status, body = _http(ready["control"], "GET", "/stats")
        assert status == 200 and body["stats"]["connections_accepted"] == 2
        assert cmd("stats")["stats"]["mode"] == "pass"

        assert cmd("quit")["ok"] is True
        assert proc.wait(timeout=IO_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=IO_TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_cli_exits_cleanly_on_sigterm(echo):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.faultproxy",
            "--listen",
            f"{HOST}:0",
            "--upstream",
            f"{HOST}:{echo.port}",
            "--no-stdin",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["control"] is None
        proc.terminate()
        assert proc.wait(timeout=IO_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=IO_TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()
