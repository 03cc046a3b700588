"""The protocol server driven by real clients (psql, psycopg 3, asyncpg) and by a raw
socket, with a small SQLite-backed fake standing in for the SQL side only.

The fake: `$n::type` casts give parameter types, a column alias "name:type" gives
a result column's type (otherwise the type follows the first row's values), and
`SELECT pg_sleep(s)` waits until cancelled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
import psycopg
import psycopg.errors
import pytest
import scramp
import uvloop

from borealis.errors import SqlError
from borealis.pgwire import messages as m
from borealis.pgwire.backend import (
    FAILED_TRANSACTION,
    IDLE,
    IN_TRANSACTION,
    Column,
    CopySpec,
    Description,
    Outcome,
    Startup,
)
from borealis.pgwire.scram import make_verifier
from borealis.pgwire.server import PgServer, ServerSettings, start_server
from borealis.pgwire.types import oid_of
from borealis.wait import wait_until

pytestmark = pytest.mark.integration

USER = "bob"
PASSWORD = "s3cret pässword"
_PARAMETER = re.compile(r"\$(\d+)(?:::(\w+))?")
_CAST = re.compile(r"::\w+")
_SLEEP = re.compile(r"^\s*select\s+pg_sleep\(\s*([\d.]+)\s*\)\s*$", re.IGNORECASE)
_COPY = re.compile(r"^\s*copy\s+(\w+)\s+(from\s+stdin|to\s+stdout)(.*)$", re.IGNORECASE)
_VALUE_TYPES = {int: "int8", float: "float8", str: "text", bytes: "bytea"}


class FakeBackend:
    """One session on a private in-memory SQLite database."""

    def __init__(self, startup: Startup, events: dict[str, Any]) -> None:
        self.startup = startup
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._failed = False
        self._cancelled = asyncio.Event()
        self._events = events
        self._copy_table = ""
        self._copy_count = 0

    @property
    def transaction_status(self) -> bytes:
        if not self._db.in_transaction:
            return IDLE
        return FAILED_TRANSACTION if self._failed else IN_TRANSACTION

    def split(self, sql: str) -> list[str]:
        return [part.strip() for part in sql.split(";") if part.strip()]

    async def describe(self, sql: str, parameter_oids: Sequence[int]) -> Description:
        oids = _parameter_oids(sql, parameter_oids)
        if _SLEEP.match(sql):
            return Description(oids, (Column("pg_sleep", oid_of("void")),))
        if not sql.lstrip().lower().startswith(("select", "values", "with")):
            return Description(oids, None)
        translated = _translate(sql).rstrip().rstrip(";")
        cursor = self._run(f"SELECT * FROM ({translated}) LIMIT 0", [None] * len(oids))
        return Description(oids, _columns(cursor.description, None))

    async def execute(
        self, sql: str, parameters: Sequence[Any], parameter_oids: Sequence[int]
    ) -> Outcome:
        self._events["statements"].append(sql)
        sleep = _SLEEP.match(sql)
        if sleep:
            return await self._sleep(float(sleep.group(1)))
        if sql.upper().startswith("DEALLOCATE"):
            return Outcome("DEALLOCATE ALL" if sql.upper().endswith(" ALL") else "DEALLOCATE")
        copy = _COPY.match(sql)
        if copy:
            return self._copy(copy)
        if self._failed and not sql.lower().startswith("rollback"):
            raise SqlError("current transaction is aborted", "25P02")
        try:
            cursor = self._run(_translate(sql), parameters)
        except SqlError:
            self._failed = self._db.in_transaction
            raise
        if sql.lower().startswith("rollback"):
            self._failed = False
        if cursor.description is None:
            return Outcome(_tag(sql, cursor.rowcount))
        rows = cursor.fetchall()
        columns = _columns(cursor.description, rows[0] if rows else None)
        return Outcome(f"SELECT {len(rows)}", columns, rows)

    def _run(self, sql: str, parameters: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, tuple(parameters))
        except sqlite3.IntegrityError as error:
            raise SqlError(str(error), "23505", detail="Key already exists.") from None
        except sqlite3.Error as error:
            text = str(error)
            if "syntax error" in text or "incomplete input" in text:
                near = re.search(r'near "([^"]+)"', text)
                position = sql.find(near.group(1)) + 1 if near else 1
                raise SqlError(text, "42601", position=position) from None
            if "no such table" in text:
                raise SqlError(text, "42P01") from None
            raise SqlError(text, "42000") from None

    async def _sleep(self, seconds: float) -> Outcome:
        self._cancelled.clear()
        self._events["sleeping"] = True
        try:
            await asyncio.wait_for(self._cancelled.wait(), seconds)
        except TimeoutError:
            return Outcome("SELECT 1", (Column("pg_sleep", oid_of("void")),), [("",)])
        finally:
            self._events["sleeping"] = False
        raise SqlError("canceling statement due to user request", "57014")

    def _copy(self, match: re.Match[str]) -> Outcome:
        table, direction, options = match.group(1), match.group(2).lower(), match.group(3)
        csv = "csv" in options.lower()
        cursor = self._db.execute(f"SELECT * FROM {table}")
        count = len(cursor.description)
        spec = CopySpec(
            "in" if direction.startswith("from") else "out",
            "csv" if csv else "text",
            count,
            delimiter="," if csv else "\t",
            null="" if csv else "\\N",
            header="header" in options.lower(),
        )
        if spec.direction == "out":
            rows = cursor.fetchall()
            return Outcome(f"COPY {len(rows)}", _columns(cursor.description, None), rows, spec)
        self._copy_table, self._copy_count = table, 0
        self._db.execute("BEGIN") if not self._db.in_transaction else None
        return Outcome("COPY", copy=spec)

    async def copy_rows(self, rows: list[list[str | None]]) -> None:
        marks = ",".join("?" * len(rows[0]))
        self._db.executemany(f"INSERT INTO {self._copy_table} VALUES ({marks})", rows)
        self._copy_count += len(rows)

    async def copy_done(self) -> Outcome:
        self._db.execute("COMMIT")
        return Outcome(f"COPY {self._copy_count}")

    async def copy_fail(self, message: str) -> None:
        self._events["copy_failures"].append(message)
        self._db.execute("ROLLBACK")

    def cancel(self) -> None:
        self._events["cancels"] += 1
        self._cancelled.set()

    async def close(self) -> None:
        self._events["closed"] += 1
        self._db.close()


def _parameter_oids(sql: str, given: Sequence[int]) -> tuple[int, ...]:
    found: dict[int, int] = {}
    for match in _PARAMETER.finditer(sql):
        number = int(match.group(1))
        found[number] = oid_of(match.group(2)) if match.group(2) else found.get(number, 25)
    count = max([len(given), *found.keys()], default=0)
    return tuple(
        given[i] if i < len(given) and given[i] else found.get(i + 1, 25) for i in range(count)
    )


def _translate(sql: str) -> str:
    return _CAST.sub("", _PARAMETER.sub(lambda match: f"?{match.group(1)}", sql))


def _columns(description: Any, row: Sequence[Any] | None) -> tuple[Column, ...]:
    columns = []
    for index, item in enumerate(description):
        name, _, type_name = item[0].partition(":")
        if not type_name:
            value = row[index] if row is not None else None
            type_name = _VALUE_TYPES.get(type(value), "text")
        columns.append(Column(name, oid_of(type_name)))
    return tuple(columns)


def _tag(sql: str, rowcount: int) -> str:
    words = sql.split()
    verb = words[0].upper()
    if verb == "INSERT":
        return f"INSERT 0 {rowcount}"
    if verb in ("UPDATE", "DELETE"):
        return f"{verb} {rowcount}"
    if verb in ("CREATE", "DROP"):
        return f"{verb} {words[1].upper()}"
    return verb


class ServerThread:
    """The server on its own uvloop event loop in a thread, so synchronous
    clients can drive it from the test."""

    def __init__(self, settings: ServerSettings) -> None:
        self.events: dict[str, Any] = {
            "statements": [],
            "cancels": 0,
            "closed": 0,
            "copy_failures": [],
            "sleeping": False,
        }
        self.verifiers = {USER: make_verifier(PASSWORD)}
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: PgServer = self.call(
            start_server("127.0.0.1", 0, self._backend, self.verifiers.get, settings)
        )
        self.port = self.server.port

    async def _backend(self, startup: Startup) -> FakeBackend:
        if startup.database == "missing":
            raise SqlError(f'database "{startup.database}" does not exist', "3D000")
        return FakeBackend(startup, self.events)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def dsn(self, password: str = PASSWORD, user: str = USER) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=user, password=password, dbname="db"
        )

    def url(self, password: str = PASSWORD, user: str = USER) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/db"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(ServerSettings(connections_max=20, query_bytes_max=1024 * 1024))
    try:
        yield running
    finally:
        running.stop()


def run_async(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


# --- raw protocol client ---


class RawClient:
    """A minimal frontend over a blocking socket, for what drivers do not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""
        self.backend_key = (0, 0)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def message(self) -> tuple[bytes, bytes]:
        header = self._exactly(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        return kind, self._exactly(length - 4)

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        seen = []
        while True:
            message = self.message()
            seen.append(message)
            if message[0] == kind:
                return seen

    def read_to_eof(self) -> bytes:
        data = self._buffer
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk

    def login(self, password: str = PASSWORD) -> None:
        body = struct.pack("!i", m.PROTOCOL_VERSION_3) + b"user\x00bob\x00database\x00db\x00\x00"
        self.send(struct.pack("!i", len(body) + 4) + body)
        kind, body = self.message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10
        client = scramp.ScramClient(["SCRAM-SHA-256"], USER, password)
        first = client.get_client_first().encode()
        self.send(typed(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        kind, body = self.message()
        client.set_server_first(body[4:].decode())
        self.send(typed(b"p", client.get_client_final().encode()))
        for kind, body in self.until(b"Z"):
            if kind == b"K":
                self.backend_key = struct.unpack("!ii", body)


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.rstrip(b"\x00").split(b"\x00"):
        fields[part[:1].decode()] = part[1:].decode()
    return fields


# --- psql ---


def test_psql_creates_inserts_and_selects(server: ServerThread) -> None:
    environment = {**os.environ, "PGPASSWORD": PASSWORD, "PGCONNECT_TIMEOUT": "10"}
    script = (
        "CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'one'), (2, 'two'); "
        "SELECT a, b FROM t ORDER BY a"
    )
    command = ["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", USER, "-d", "db"]
    result = subprocess.run(
        [*command, "-X", "-A", "-t", "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # psql 15 prints every statement's result of a multi-statement -c.
    assert result.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 2", "1|one", "2|two"]


def test_psql_wrong_password_is_refused(server: ServerThread) -> None:
    environment = {**os.environ, "PGPASSWORD": "wrong", "PGCONNECT_TIMEOUT": "10"}
    command = ["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", USER, "-d", "db"]
    result = subprocess.run(
        [*command, "-X", "-c", "SELECT 1"], env=environment, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert 'password authentication failed for user "bob"' in result.stderr


# --- psycopg ---

TYPED_VALUES: list[tuple[str, Any]] = [
    ("int2", 12),
    ("int4", -2_000_000_000),
    ("int8", 9_000_000_000_000),
    ("float8", 1.5e-7),
    ("numeric", decimal.Decimal("-12345678901234567890.000123")),
    ("bool", True),
    ("text", "héllo, wörld"),
    ("varchar", "v"),
    ("bytea", b"\x00\x01\xff\\"),
    ("date", dt.date(2024, 2, 29)),
    ("timestamp", dt.datetime(2024, 1, 2, 3, 4, 5, 123000)),
    ("timestamptz", dt.datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("jsonb", {"a": [1, 2, None]}),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_round_trips_every_type(server: ServerThread, binary: bool) -> None:
    marker = "%b" if binary else "%t"
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        cursor = connection.cursor(binary=binary)
        for type_name, value in TYPED_VALUES:
            parameter = psycopg.types.json.Jsonb(value) if type_name == "jsonb" else value
            cursor.execute(f'SELECT {marker} AS "v:{type_name}"', [parameter])
            assert cursor.fetchone() == (value,), type_name


def test_psycopg_transactions_executemany_and_errors(server: ServerThread) -> None:
    with psycopg.connect(server.dsn()) as connection:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        cursor.executemany("INSERT INTO accounts VALUES (%s, %s)", [(i, i * 10) for i in range(50)])
        connection.commit()
        cursor.execute("SELECT count(*), sum(balance) FROM accounts")
        assert cursor.fetchone() == (50, 12250)
        with pytest.raises(psycopg.errors.UniqueViolation):
            cursor.execute("INSERT INTO accounts VALUES (%s, %s)", (1, 1))
        connection.rollback()
        with pytest.raises(psycopg.errors.SyntaxError) as raised:
            cursor.execute("SELECT 1 FROMM accounts")
        # SQLite reports the error near "accounts": the fake's position passes through.
        assert raised.value.diag.statement_position == "16"
        connection.rollback()
        cursor.execute("SELECT balance FROM accounts WHERE id = %s", (7,))
        assert cursor.fetchall() == [(70,)]


def test_psycopg_copy_in_and_out(server: ServerThread) -> None:
    rows = [(i, f"name\t{i}\n", None if i % 3 else "x") for i in range(12000)]
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE c (id INTEGER, name TEXT, note TEXT)")
        with cursor.copy("COPY c FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert cursor.rowcount == len(rows)
        cursor.execute("SELECT count(*), max(name) FROM c")
        assert cursor.fetchone() == (12000, "name\t9999\n")
        with cursor.copy("COPY c TO STDOUT") as copy:
            copied = list(copy.rows())
        assert copied[:3] == [
            ("0", "name\t0\n", "x"),
            ("1", "name\t1\n", None),
            ("2", "name\t2\n", None),
        ]
        assert len(copied) == len(rows)
        with cursor.copy("COPY c TO STDOUT (FORMAT csv)") as copy:
            text = b"".join(copy).decode()
        assert text.startswith('0,"name\t0\n",x\n1,"name\t1\n",\n')


def test_copy_error_rolls_back_and_session_continues(server: ServerThread) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE narrow (id INTEGER)")
        with (
            pytest.raises(psycopg.errors.BadCopyFileFormat),
            cursor.copy("COPY narrow FROM STDIN") as copy,
        ):
            copy.write(b"1\n2\textra\n")
        cursor.execute("SELECT count(*) FROM narrow")
        assert cursor.fetchone() == (0,)
    assert server.events["copy_failures"]


def test_ten_megabyte_query_is_refused_and_connection_stays_usable(server: ServerThread) -> None:
    huge = "SELECT '" + "x" * (10 * 1024 * 1024) + "'"
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            connection.execute(huge)
        assert connection.execute("SELECT 41 + 1").fetchone() == (42,)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            connection.execute(huge, prepare=False)
        assert connection.execute("SELECT %s + 1", (1,)).fetchone() == (2,)


def test_psycopg_cancel_gives_57014(server: ServerThread) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                connection.execute("SELECT pg_sleep(20)")
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = error

        runner = threading.Thread(target=run)
        runner.start()
        wait_until(lambda: server.events["sleeping"], 10, what="the statement to start")
        connection.cancel_safe()
        runner.join(timeout=10)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
        assert connection.execute("SELECT 1").fetchone() == (1,)


# --- asyncpg ---


def test_asyncpg_fetch_with_binary_formats(server: ServerThread) -> None:
    async def scenario() -> None:
        connection = await asyncpg.connect(server.url())
        try:
            assert await connection.fetchval('SELECT $1::int4 AS "v:int4"', 7) == 7
            assert await connection.fetchval('SELECT $1::int8 + 1 AS "v:int8"', 2**40) == 2**40 + 1
            assert await connection.fetchval('SELECT $1::float8 AS "v:float8"', 2.5) == 2.5
            number = decimal.Decimal("3.14159")
            assert await connection.fetchval('SELECT $1::numeric AS "v:numeric"', number) == number
            moment = dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.UTC)
            fetched = await connection.fetchval('SELECT $1::timestamptz AS "v:timestamptz"', moment)
            assert fetched == moment
            day = dt.date(1999, 12, 31)
            assert await connection.fetchval('SELECT $1::date AS "v:date"', day) == day
            identity = uuid.uuid4()
            assert await connection.fetchval('SELECT $1::uuid AS "v:uuid"', identity) == identity
            assert (
                await connection.fetchval('SELECT $1::bytea AS "v:bytea"', b"\x00\xfe")
                == b"\x00\xfe"
            )
            document = await connection.fetchval('SELECT $1::jsonb AS "v:jsonb"', '{"k": 1}')
            assert json.loads(document) == {"k": 1}
            row = await connection.fetchrow(
                'SELECT $1::text AS "a:text", $2::bool AS "b:bool"', "ä", False
            )
            assert (row["a"], row["b"]) == ("ä", False)
            await connection.execute("CREATE TABLE items (id INTEGER, label TEXT)")
            await connection.executemany(
                "INSERT INTO items VALUES ($1::int4, $2::text)", [(i, f"l{i}") for i in range(10)]
            )
            records = await connection.fetch(
                'SELECT id AS "id:int4", label AS "label:text" FROM items WHERE id >= $1::int4 ORDER BY id',
                7,
            )
            assert [tuple(record) for record in records] == [(7, "l7"), (8, "l8"), (9, "l9")]
        finally:
            await connection.close()

    run_async(scenario())


def test_asyncpg_cursor_prefetch_uses_portal_suspension(server: ServerThread) -> None:
    async def scenario() -> list[int]:
        connection = await asyncpg.connect(server.url())
        try:
            await connection.execute("CREATE TABLE numbers (n INTEGER)")
            await connection.executemany(
                "INSERT INTO numbers VALUES ($1::int4)", [(i,) for i in range(25)]
            )
            async with connection.transaction():
                query = 'SELECT n AS "n:int4" FROM numbers ORDER BY n'
                return [record["n"] async for record in connection.cursor(query, prefetch=4)]
        finally:
            await connection.close()

    assert run_async(scenario()) == list(range(25))


def test_asyncpg_timeout_cancels_and_connection_stays_usable(server: ServerThread) -> None:
    """asyncpg answers a timeout with a CancelRequest and swallows the 57014 it gets
    back; what shows is the backend's cancel() and a connection that still works."""
    cancels_before = server.events["cancels"]

    async def scenario() -> int:
        connection = await asyncpg.connect(server.url())
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(connection.fetchval("SELECT pg_sleep(20)"), 0.5)
            return await connection.fetchval('SELECT 1 + $1::int4 AS "v:int4"', 1)
        finally:
            await connection.close()

    assert run_async(scenario()) == 2
    assert server.events["cancels"] > cancels_before


def test_raw_cancel_request_gives_57014(server: ServerThread) -> None:
    client = RawClient(server.port)
    try:
        client.login()
        key = client.backend_key
        client.send(typed(b"Q", b"SELECT pg_sleep(20)\x00"))
        wait_until(lambda: server.events["sleeping"], 10, what="the statement to start")
        cancels_before = server.events["cancels"]
        wrong = RawClient(server.port)
        wrong.send(struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, key[0], key[1] ^ 1))
        assert wrong.read_to_eof() == b""
        wrong.close()
        assert server.events["cancels"] == cancels_before and server.events["sleeping"]
        canceller = RawClient(server.port)
        canceller.send(struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, *key))
        assert canceller.read_to_eof() == b""
        canceller.close()
        replies = client.until(b"Z")
        assert replies[0][0] == b"E" and error_fields(replies[0][1])["C"] == "57014"
    finally:
        client.close()


def test_wrong_password_and_unknown_user_get_the_same_28p01(server: ServerThread) -> None:
    async def attempt(user: str, password: str) -> str:
        with pytest.raises(asyncpg.InvalidPasswordError) as raised:
            await asyncpg.connect(server.url(password=password, user=user))
        assert raised.value.sqlstate == "28P01"
        return str(raised.value)

    assert run_async(attempt(USER, "nope")) == 'password authentication failed for user "bob"'
    assert run_async(attempt("mallory", "x")) == 'password authentication failed for user "mallory"'


def test_missing_database_error_from_backend_factory(server: ServerThread) -> None:
    async def attempt() -> None:
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{server.port}/missing")

    run_async(attempt())


# --- raw socket ---


def test_garbage_bytes_close_only_that_connection(server: ServerThread) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as bystander:
        garbage = RawClient(server.port)
        garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = garbage.read_to_eof()
        garbage.close()
        assert reply[:1] == b"E" and b"C08P01" in reply
        after_login = RawClient(server.port)
        after_login.login()
        after_login.send(b"\x01\x02\x03\x04\x05\x06\x07\x08")
        reply = after_login.read_to_eof()
        after_login.close()
        assert reply[:1] == b"E" and b"C08P01" in reply
        assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_truncated_and_malformed_messages_are_08p01(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.login()
    # A Query whose string lacks its NUL terminator.
    client.send(typed(b"Q", b"SELECT 1"))
    reply = client.read_to_eof()
    client.close()
    assert reply[:1] == b"E" and error_fields(reply[5:])["C"] == "08P01"
    truncated = RawClient(server.port)
    truncated.login()
    # A Bind announcing two parameters but carrying one, then EOF.
    truncated.send(typed(b"B", b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01x"))
    reply = truncated.read_to_eof()
    truncated.close()
    assert reply[:1] == b"E" and error_fields(reply[5:])["C"] == "08P01"


def test_raw_extended_protocol_with_row_limits(server: ServerThread) -> None:
    client = RawClient(server.port)
    try:
        client.login()
        client.send(
            typed(b"Q", b"CREATE TABLE r (n INTEGER); INSERT INTO r VALUES (1),(2),(3)\x00")
        )
        kinds = [kind for kind, _ in client.until(b"Z")]
        assert kinds == [b"C", b"C", b"Z"]
        parse = typed(b"P", b"s1\x00SELECT n FROM r ORDER BY n\x00\x00\x00")
        bind = typed(b"B", b"p1\x00s1\x00\x00\x00\x00\x00\x00\x01\x00\x01")
        describe = typed(b"D", b"Pp1\x00")
        execute = typed(b"E", b"p1\x00" + struct.pack("!i", 2))
        client.send(parse + bind + describe + execute + typed(b"H", b""))
        seen = [client.message() for _ in range(6)]
        assert [kind for kind, _ in seen] == [b"1", b"2", b"T", b"D", b"D", b"s"]
        assert seen[3][1] == b"\x00\x01\x00\x00\x00\x08" + struct.pack("!q", 1)
        client.send(execute + typed(b"S", b""))
        rest = client.until(b"Z")
        assert [kind for kind, _ in rest] == [b"D", b"C", b"Z"]
        assert rest[1][1] == b"SELECT 1\x00"
        # Re-parsing a named statement without Close is 42P05; then skip to Sync.
        client.send(parse + bind + execute + typed(b"S", b""))
        failed = client.until(b"Z")
        assert [kind for kind, _ in failed] == [b"E", b"Z"]
        assert error_fields(failed[0][1])["C"] == "42P05"
        # Describe S gives ParameterDescription and RowDescription; NoData for DDL.
        client.send(typed(b"D", b"Ss1\x00") + typed(b"S", b""))
        assert [kind for kind, _ in client.until(b"Z")] == [b"t", b"T", b"Z"]
        client.send(typed(b"Q", b"\x00"))
        assert [kind for kind, _ in client.until(b"Z")] == [b"I", b"Z"]
        client.send(typed(b"X", b""))
        assert client.read_to_eof() == b""
    finally:
        client.close()


def test_connection_limit_gives_53300() -> None:
    running = ServerThread(ServerSettings(connections_max=2))
    try:
        first, second = RawClient(running.port), RawClient(running.port)
        first.login()
        second.login()
        third = RawClient(running.port)
        body = struct.pack("!i", m.PROTOCOL_VERSION_3) + b"user\x00bob\x00\x00"
        third.send(struct.pack("!i", len(body) + 4) + body)
        reply = third.read_to_eof()
        assert error_fields(reply[5:])["C"] == "53300"
        for client in (first, second, third):
            client.close()
        wait_until(lambda: running.server.connection_count == 0, 10, what="connections to close")
        assert running.events["closed"] == 2
    finally:
        running.stop()


def test_tls_when_configured_and_refused_otherwise(server: ServerThread, tmp_path: Any) -> None:
    import ssl

    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate), str(key))
    secure = ServerThread(ServerSettings(ssl_context=context))
    try:
        with psycopg.connect(secure.dsn() + " sslmode=require", autocommit=True) as connection:
            assert connection.pgconn.ssl_in_use
            assert connection.execute("SELECT 'over tls'").fetchone() == ("over tls",)
    finally:
        secure.stop()
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(server.dsn() + " sslmode=require")
    with psycopg.connect(server.dsn() + " sslmode=prefer", autocommit=True) as plain:
        assert not plain.pgconn.ssl_in_use
