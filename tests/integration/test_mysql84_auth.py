"""MySQL 8.4's default authentication, as far as this machine can show it (no MySQL server can be
installed here).

`caching_sha2_password` over plain TCP, on the first login after each server start (an empty
cache), asks the client to send its password RSA-encrypted with the server's public key. asyncmy
does that only with `cryptography` installed. The server here is a protocol stand-in: it speaks
exactly that exchange (handshake v10, "perform full authentication", public key on request,
RSA-OAEP decryption and the password check) with a real key pair, then answers a SELECT. The
client side is real: ChancePay's own `Database` (its connect options, init command, sql_mode)
over a real socket. Not proven: a real MySQL 8.4 server's behaviour beyond this exchange.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseUnavailable

PASSWORD = "s3cret-Pass"
PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH, CONNECT_WITH_DB = 0x200, 0x8000, 0x80000, 0x8
LONG_PASSWORD, TRANSACTIONS, MULTI_RESULTS, LENENC_DATA = 0x1, 0x2000, 0x20000, 0x200000
CAPABILITIES = (
    PROTOCOL_41
    | SECURE_CONNECTION
    | PLUGIN_AUTH
    | CONNECT_WITH_DB
    | LONG_PASSWORD
    | TRANSACTIONS
    | MULTI_RESULTS
    | LENENC_DATA
)


def _lenenc(b: bytes) -> bytes:
    assert len(b) < 251
    return bytes([len(b)]) + b


class MySQL84AuthStandIn:
    """Accepts connections on 127.0.0.1 and runs caching_sha2_password's full authentication."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.logins: list[tuple[str, bool]] = []  # (user, password ok)
        self.public_key_requests = 0
        self.queries: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    @staticmethod
    def _send(conn: socket.socket, seq: int, payload: bytes) -> None:
        conn.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload)

    @staticmethod
    def _recv(conn: socket.socket) -> tuple[int, bytes]:
        head = b""
        while len(head) < 4:
            chunk = conn.recv(4 - len(head))
            if not chunk:
                raise EOFError
            head += chunk
        length = int.from_bytes(head[:3], "little")
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise EOFError
            body += chunk
        return head[3], body

    def _ok(self, conn: socket.socket, seq: int) -> None:
        self._send(conn, seq, b"\x00\x00\x00\x02\x00\x00\x00")

    def _session(self, conn: socket.socket) -> None:
        try:
            scramble = os.urandom(20)
            hello = (
                b"\x0a"
                + b"8.4.5-standin\x00"
                + struct.pack("<I", 7)
                + scramble[:8]
                + b"\x00"
                + struct.pack("<H", CAPABILITIES & 0xFFFF)
                + b"\xff"
                + struct.pack("<H", 2)
                + struct.pack("<H", CAPABILITIES >> 16)
                + bytes([21])
                + b"\x00" * 10
                + scramble[8:]
                + b"\x00"
                + b"caching_sha2_password\x00"
            )
            self._send(conn, 0, hello)
            seq, resp = self._recv(conn)
            user = resp[32 : resp.index(b"\x00", 32)].decode()
            # The fast path cannot work: nothing is cached after a "restart". Ask for the full exchange.
            self._send(conn, seq + 1, b"\x01\x04")
            seq, req = self._recv(conn)
            if req == b"\x02":  # the client asks for the public key (no TLS)
                self.public_key_requests += 1
                self._send(conn, seq + 1, b"\x01" + self.pem)
                seq, req = self._recv(conn)
            plain = self.key.decrypt(
                req, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
            )
            password = bytes(b ^ scramble[i % len(scramble)] for i, b in enumerate(plain)).rstrip(b"\x00").decode()
            ok = password == PASSWORD
            self.logins.append((user, ok))
            if not ok:
                self._send(conn, seq + 1, b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied")
                return
            self._ok(conn, seq + 1)
            while True:
                seq, cmd = self._recv(conn)
                if cmd[:1] == b"\x01":  # COM_QUIT
                    return
                text = cmd[1:].decode(errors="replace")
                self.queries.append(text)
                if text.strip().upper().startswith("SELECT"):
                    self._result_one(conn, seq + 1)
                else:
                    self._ok(conn, seq + 1)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            conn.close()

    def _result_one(self, conn: socket.socket, seq: int) -> None:
        eof = b"\xfe\x00\x00\x02\x00"
        column = (
            _lenenc(b"def")
            + _lenenc(b"")
            + _lenenc(b"")
            + _lenenc(b"")
            + _lenenc(b"1")
            + _lenenc(b"")
            + b"\x0c"
            + struct.pack("<HIBHB", 63, 1, 8, 0x81, 0)
            + b"\x00\x00"
        )
        for payload in (b"\x01", column, eof, _lenenc(b"1"), eof):
            self._send(conn, seq, payload)
            seq += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def mysql84():
    server = MySQL84AuthStandIn()
    yield server
    server.close()


def _database(port: int, password: str = PASSWORD) -> Database:
    return Database(
        DatabaseURL.parse(f"mysql://chancepay_orchestrator:{password}@127.0.0.1:{port}/chancepay_orchestrator"),
        pool_size=1,
        timeout=5,
    )


def test_roles_log_in_with_caching_sha2_password_over_plain_tcp(mysql84) -> None:
    async def go() -> bool:
        db = _database(mysql84.port)
        try:
            return await db.ping()
        finally:
            await db.close()

    assert asyncio.run(go()) is True
    assert mysql84.logins == [("chancepay_orchestrator", True)]
    assert mysql84.public_key_requests == 1, "the RSA exchange ran"
    assert any("sql_mode" in q.lower() or "isolation" in q.lower() for q in mysql84.queries), mysql84.queries


def test_a_wrong_password_is_refused_after_the_rsa_exchange(mysql84) -> None:
    async def go() -> BaseException | None:
        db = _database(mysql84.port, "wrong")
        try:
            async with db.transaction() as cur:
                await cur.execute("SELECT 1")
        except Exception as exc:
            return exc
        finally:
            await db.close()
        return None

    error = asyncio.run(go())
    assert isinstance(error, DatabaseUnavailable) and "1045" in str(error), error
    assert mysql84.logins == [("chancepay_orchestrator", False)]


def test_without_cryptography_the_login_fails(mysql84, monkeypatch) -> None:
    """What the chart's images did before `cryptography` was a dependency (the control: this
    test shows the stand-in really requires the RSA path)."""
    import asyncmy.auth

    monkeypatch.setattr(asyncmy.auth, "_have_cryptography", False)

    async def go() -> BaseException | None:
        db = _database(mysql84.port)
        try:
            async with db.transaction() as cur:
                await cur.execute("SELECT 1")
        except BaseException as exc:
            return exc
        finally:
            await db.close()
        return None

    error = asyncio.run(go())
    assert error is not None and "cryptography" in repr(error) + repr(error.__cause__), repr(error)
