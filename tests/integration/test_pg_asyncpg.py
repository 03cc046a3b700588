"""Must hold 3: asyncpg (binary results, prepared statements) and cancellation."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint
table_name = endpoints.table_name

TEST_TIMEOUT_S = 60.0
SLOW_SQL = (
    "WITH RECURSIVE counter(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM counter "
    "WHERE n < 1000000000) SELECT count(*) FROM counter"
)
# After a cancel the connection must answer at once; an uncancelled SLOW_SQL takes
# minutes on PostgreSQL and on SQLite.
USABLE_AFTER_CANCEL_S = 10.0


def run(endpoint: PgEndpoint, body: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
    """Runs `body` with a fresh connection on a new event loop, within a deadline."""

    async def main() -> None:
        connection = await asyncpg.connect(**endpoint.asyncpg_kwargs())
        try:
            await asyncio.wait_for(body(connection), TEST_TIMEOUT_S)
        finally:
            await connection.close(timeout=10)

    asyncio.run(main())


ROW_VALUES: list[tuple[str, str, Any]] = [
    ("c_int2", "smallint", 12),
    ("c_int4", "integer", -7),
    ("c_int8", "bigint", 2**40),
    ("c_float8", "double precision", 0.125),
    ("c_numeric", "numeric(12,3)", Decimal("1234.500")),
    ("c_bool", "boolean", False),
    ("c_text", "text", "ünïcode"),
    ("c_bytea", "bytea", b"\x00\xff\x10"),
    ("c_date", "date", datetime.date(2020, 1, 2)),
    ("c_timestamp", "timestamp", datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)),
    (
        "c_timestamptz",
        "timestamptz",
        datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC),
    ),
    ("c_uuid", "uuid", uuid.UUID("00000000-0000-4000-8000-000000000001")),
    ("c_jsonb", "jsonb", json.dumps({"a": 1})),
]


def test_fetch_fetchrow_fetchval_with_parameters(
    pg_endpoint: PgEndpoint,
    table_name: str,
) -> None:
    columns = ", ".join(column for column, _, _ in ROW_VALUES)
    marks = ", ".join(f"${index + 2}" for index in range(len(ROW_VALUES)))

    async def body(connection: asyncpg.Connection) -> None:
        definitions = ", ".join(f"{column} {sql_type}" for column, sql_type, _ in ROW_VALUES)
        await connection.execute(
            f"CREATE TABLE {table_name} (id integer PRIMARY KEY, {definitions})"
        )
        insert = f"INSERT INTO {table_name} (id, {columns}) VALUES ($1, {marks})"
        await connection.execute(insert, 1, *[value for _, _, value in ROW_VALUES])
        await connection.executemany(
            f"INSERT INTO {table_name} (id, c_text) VALUES ($1, $2)",
            [(index, f"row {index}") for index in range(2, 12)],
        )

        row = await connection.fetchrow(f"SELECT {columns} FROM {table_name} WHERE id = $1", 1)
        assert row is not None
        for column, _, value in ROW_VALUES:
            got = json.loads(row[column]) if column == "c_jsonb" else row[column]
            want = json.loads(value) if column == "c_jsonb" else value
            assert got == want, (column, got)

        rows = await connection.fetch(
            f"SELECT id, c_text FROM {table_name} WHERE id BETWEEN $1 AND $2 ORDER BY id", 3, 5
        )
        assert [tuple(record) for record in rows] == [(3, "row 3"), (4, "row 4"), (5, "row 5")]
        total = await connection.fetchval(
            f"SELECT count(*) FROM {table_name} WHERE c_text LIKE $1", "row %"
        )
        assert total == 10
        found = await connection.fetchval(
            f"SELECT id FROM {table_name} WHERE c_uuid = $1 AND c_timestamptz = $2 "
            "AND c_numeric = $3 AND c_bytea = $4",
            ROW_VALUES[11][2],
            ROW_VALUES[10][2],
            ROW_VALUES[4][2],
            ROW_VALUES[7][2],
        )
        assert found == 1

    run(pg_endpoint, body)


def test_prepared_statement_and_transaction(
    pg_endpoint: PgEndpoint,
    table_name: str,
) -> None:
    async def body(connection: asyncpg.Connection) -> None:
        await connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, v real)")
        statement = await connection.prepare(f"INSERT INTO {table_name} VALUES ($1, $2)")
        async with connection.transaction():
            for index in range(20):
                await statement.fetch(index, index / 2)
        try:
            async with connection.transaction():
                await connection.execute(f"INSERT INTO {table_name} VALUES (100, 1)")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        query = await connection.prepare(f"SELECT sum(v), count(*) FROM {table_name}")
        assert tuple(await query.fetchrow()) == (95.0, 20)
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(f"INSERT INTO {table_name} VALUES (1, 0)")

    run(pg_endpoint, body)


def test_timeout_cancels_query_and_connection_stays_usable(pg_endpoint: PgEndpoint) -> None:
    """asyncio.wait_for's timeout makes asyncpg send a CancelRequest; the server stops
    the statement (57014, which asyncpg consumes) and the session answers at once."""

    async def body(connection: asyncpg.Connection) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.fetchval(SLOW_SQL), timeout=0.5)
        started = time.monotonic()
        value = await asyncio.wait_for(
            connection.fetchval("SELECT $1::int + 1", 41), USABLE_AFTER_CANCEL_S
        )
        assert value == 42
        assert time.monotonic() - started < USABLE_AFTER_CANCEL_S

    run(pg_endpoint, body)


def test_cancelled_statement_raises_query_canceled(pg_endpoint: PgEndpoint) -> None:
    """A CancelRequest for a running statement surfaces as QueryCanceledError (57014)
    on the connection running it.

    The CancelRequest is sent by hand from the pid and key the server gave this
    session (BackendKeyData); asyncpg keeps the key in its protocol object. It is
    repeated until the statement ends, since a cancel that arrives before the
    statement starts is ignored."""

    async def cancel_until(connection: asyncpg.Connection, done: asyncio.Event) -> None:
        pid = connection.get_server_pid()
        secret = connection._protocol.backend_secret  # noqa: SLF001 - the only way to it
        deadline = time.monotonic() + USABLE_AFTER_CANCEL_S
        while not done.is_set() and time.monotonic() < deadline:
            await send_cancel_request(pg_endpoint.host, pg_endpoint.port, pid, secret)
            try:
                await asyncio.wait_for(done.wait(), 0.2)
            except TimeoutError:
                continue

    async def body(connection: asyncpg.Connection) -> None:
        done = asyncio.Event()
        canceller = asyncio.create_task(cancel_until(connection, done))
        try:
            with pytest.raises(asyncpg.QueryCanceledError) as raised:
                await connection.fetchval(SLOW_SQL)
        finally:
            done.set()
            await canceller
        assert raised.value.sqlstate == "57014"
        assert await connection.fetchval("SELECT 1") == 1

    run(pg_endpoint, body)


async def send_cancel_request(host: str, port: int, pid: int, secret: int) -> None:
    """A CancelRequest (length 16, code 80877102, pid, key) on its own connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (16).to_bytes(4, "big")
            + (80877102).to_bytes(4, "big")
            + pid.to_bytes(4, "big")
            + (secret & 0xFFFFFFFF).to_bytes(4, "big")
        )
        await writer.drain()
        # The server closes the connection without a reply once it has the request.
        await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
