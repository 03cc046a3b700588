"""Must hold 6: bad logins, malformed protocol traffic, and oversized or deeply nested
SQL get errors while other sessions carry on.

The raw-socket tests speak protocol v3 by hand (with scramp for SCRAM-SHA-256), so
they can send what no driver would.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import scramp

from borealis.wait import wait_until
from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint

SOCKET_TIMEOUT_S = 10.0
PROTOCOL_V3 = 196608
MESSAGE_BYTES_MAX = 1 << 20


class RawSession:
    """A protocol v3 connection driven message by message."""

    def __init__(self, endpoint: PgEndpoint) -> None:
        self.sock = socket.create_connection((endpoint.host, endpoint.port), SOCKET_TIMEOUT_S)
        self.sock.settimeout(SOCKET_TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()

    def send_startup(self, user: str, dbname: str) -> None:
        body = struct.pack("!i", PROTOCOL_V3)
        for key, value in (("user", user), ("database", dbname)):
            body += key.encode() + b"\0" + value.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)

    def send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def receive(self) -> tuple[bytes, bytes]:
        """The next message as (type byte, body); raises ConnectionError at EOF."""
        header = self._exactly(5)
        (length,) = struct.unpack("!i", header[1:])
        assert 4 <= length <= MESSAGE_BYTES_MAX, length
        return header[:1], self._exactly(length - 4)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def login(self, user: str, password: str, dbname: str) -> tuple[bytes, bytes]:
        """Startup and SCRAM-SHA-256; the first message after the exchange (R 0 on success,
        an ErrorResponse on failure)."""
        self.send_startup(user, dbname)
        kind, body = self.receive()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
        mechanisms = [name.decode() for name in body[4:].split(b"\0") if name]
        assert "SCRAM-SHA-256" in mechanisms, mechanisms
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = client.get_client_first().encode()
        self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        kind, body = self.receive()
        if kind == b"E":
            return kind, body
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        client.set_server_first(body[4:].decode())
        self.send(b"p", client.get_client_final().encode())
        kind, body = self.receive()
        if kind != b"R":
            return kind, body
        assert struct.unpack("!i", body[:4])[0] == 12, body
        client.set_server_final(body[4:].decode())
        return self.receive()

    def read_until_ready(self) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            kind, body = self.receive()
            messages.append((kind, body))
            if kind == b"Z":
                return messages

    def closes_after_error(self) -> bytes:
        """Reads until the server closes; what it sent meanwhile (nothing, or an error).

        Raw bytes, not messages: PostgreSQL answers an unsupported protocol version
        with a version-2 error ('E' and text, no length). Raises on the deadline if
        the server keeps the connection open."""
        received = b""
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while time.monotonic() < deadline and len(received) <= MESSAGE_BYTES_MAX:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"server kept the connection open; sent {received[:200]!r}")


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


@pytest.fixture
def bystander(pg_endpoint: PgEndpoint) -> Iterator[psycopg.Connection[Any]]:
    """A session open before the abuse, which must keep working after it."""
    with psycopg.connect(**pg_endpoint.connect_kwargs(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        yield conn
        assert conn.execute("SELECT 2").fetchone() == (2,)


def assert_server_serves(endpoint: PgEndpoint) -> None:
    with psycopg.connect(**endpoint.connect_kwargs(), autocommit=True) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_wrong_password_is_28p01_with_asyncpg(pg_endpoint: PgEndpoint) -> None:
    async def attempt() -> None:
        arguments = {**pg_endpoint.asyncpg_kwargs(), "password": "wrong password"}
        with pytest.raises(asyncpg.InvalidPasswordError) as raised:
            await asyncpg.connect(**arguments)
        assert raised.value.sqlstate == "28P01"

    asyncio.run(attempt())


def test_wrong_password_with_psycopg(pg_endpoint: PgEndpoint) -> None:
    """libpq reports a failed login as OperationalError with the server's message
    (psycopg does not attach the SQLSTATE to connection failures)."""
    arguments = {**pg_endpoint.connect_kwargs(), "password": "wrong password"}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**arguments)
    assert_server_serves(pg_endpoint)


def test_wrong_password_raw_error_response(pg_endpoint: PgEndpoint) -> None:
    session = RawSession(pg_endpoint)
    try:
        kind, body = session.login(pg_endpoint.user, "wrong password", pg_endpoint.dbname)
        assert kind == b"E", (kind, body)
        fields = error_fields(body)
        assert fields["C"] == "28P01"
        assert fields["S"] == "FATAL"
        assert session.closes_after_error() == b""
    finally:
        session.close()


def test_raw_login_and_simple_query(pg_endpoint: PgEndpoint) -> None:
    """The hand-written client works, so the abuse tests below fail for the right reason."""
    session = RawSession(pg_endpoint)
    try:
        kind, _ = session.login(pg_endpoint.user, pg_endpoint.password, pg_endpoint.dbname)
        assert kind == b"R"
        startup = session.read_until_ready()
        statuses = {
            body.split(b"\0")[0]: body.split(b"\0")[1] for kind, body in startup if kind == b"S"
        }
        assert statuses[b"server_version"].startswith(b"15.")
        assert statuses[b"client_encoding"] == b"UTF8"
        assert statuses[b"integer_datetimes"] == b"on"
        assert any(kind == b"K" for kind, _ in startup)
        assert startup[-1] == (b"Z", b"I")
        session.send(b"Q", b"SELECT 1; SELECT 'two'\0")
        replies = session.read_until_ready()
        assert [kind for kind, _ in replies] == [b"T", b"D", b"C", b"T", b"D", b"C", b"Z"]
    finally:
        session.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        b"\x00\x00\x00\x08\x00\x01\x00\x00",  # protocol version 1.0: unsupported
        b"\xff" * 64,
    ],
    ids=["http", "old-protocol", "ff-bytes"],
)
def test_garbage_startup_closes_only_that_connection(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
    garbage: bytes,
) -> None:
    session = RawSession(pg_endpoint)
    try:
        session.sock.sendall(garbage)
        received = session.closes_after_error()
        assert received[:1] in (b"", b"E"), received
    finally:
        session.close()
    assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_garbage_message_after_login_closes_with_error(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
) -> None:
    session = RawSession(pg_endpoint)
    try:
        session.login(pg_endpoint.user, pg_endpoint.password, pg_endpoint.dbname)
        session.read_until_ready()
        session.send(b"\xfe", b"not a protocol message")
        kind, body = session.receive()
        assert kind == b"E", (kind, body)
        assert error_fields(body)["C"] == "08P01"
        assert session.closes_after_error() == b""
    finally:
        session.close()
    assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


@pytest.mark.parametrize("after_login", [False, True], ids=["startup", "query"])
def test_truncated_message_closes_only_that_connection(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
    after_login: bool,
) -> None:
    session = RawSession(pg_endpoint)
    try:
        if after_login:
            session.login(pg_endpoint.user, pg_endpoint.password, pg_endpoint.dbname)
            session.read_until_ready()
            # A Query announcing 100 bytes, of which 10 arrive before the client's EOF.
            session.sock.sendall(b"Q" + struct.pack("!i", 104) + b"SELECT 1; ")
        else:
            session.sock.sendall(struct.pack("!ii", 100, PROTOCOL_V3) + b"user\0")
        session.sock.shutdown(socket.SHUT_WR)
        received = session.closes_after_error()
        assert received[:1] in (b"", b"E"), received
    finally:
        session.close()
    assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


def assert_error_not_internal(
    endpoint: PgEndpoint, sql: str, allowed_result: tuple[Any, ...] | None = None
) -> None:
    """Runs `sql`: it must fail with a non-internal SQLSTATE (class XX is a server bug),
    or, when `allowed_result` is given, may instead return that row."""
    with psycopg.connect(**endpoint.connect_kwargs(), autocommit=True) as conn:
        try:
            row = conn.execute(sql).fetchone()
        except psycopg.Error as error:
            assert error.sqlstate is not None, f"no SQLSTATE: {error!r}"[:500]
            assert not error.sqlstate.startswith("XX"), str(error)[:500]
            assert conn.execute("SELECT 4").fetchone() == (4,)
        else:
            assert allowed_result is not None, f"expected an error, got {row!r}"[:500]
            assert row == allowed_result
    assert_server_serves(endpoint)


def test_ten_megabyte_invalid_query_gets_an_error(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
) -> None:
    # A 10 MB identifier: PostgreSQL says undefined column (42703); a server that caps
    # statement size may say program_limit_exceeded (54000). Both are fine.
    assert_error_not_internal(pg_endpoint, "SELECT " + "x" * 10_000_000)


def test_ten_megabyte_literal_is_answered_or_refused(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
) -> None:
    sql = "SELECT length('" + "x" * 10_000_000 + "')"
    assert_error_not_internal(pg_endpoint, sql, allowed_result=(10_000_000,))


def test_deeply_nested_sql_gets_an_error(
    pg_endpoint: PgEndpoint,
    bystander: psycopg.Connection[Any],
) -> None:
    # PostgreSQL evaluates 5000 levels (returns 1); 100000 exhaust its parser (42601).
    assert_error_not_internal(pg_endpoint, "SELECT " + "(" * 5000 + "1" + ")" * 5000, (1,))
    assert_error_not_internal(pg_endpoint, "SELECT " + "(" * 100_000 + "1" + ")" * 100_000)
    # A long chain of operators: PostgreSQL reports stack depth exceeded (54001).
    assert_error_not_internal(pg_endpoint, "SELECT " + "1+" * 1_000_000 + "1")


def test_many_sessions_after_abuse(pg_endpoint: PgEndpoint) -> None:
    """Abused connections leave nothing behind that blocks new sessions."""
    sessions = [psycopg.connect(**pg_endpoint.connect_kwargs(), autocommit=True) for _ in range(8)]
    try:
        for index, conn in enumerate(sessions):
            assert conn.execute("SELECT %s::int", [index]).fetchone() == (index,)
    finally:
        for conn in sessions:
            conn.close()
    wait_until(lambda: all(conn.closed for conn in sessions), 5.0, what="sessions to close")
