"""Must hold 2: psycopg 3 with every listed type (text and binary), transactions,
executemany, COPY, and PostgreSQL's error classes."""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.types.json import Json, Jsonb

from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint
table_name = endpoints.table_name

# Each listed type: (column name, SQL type, a value, what comes back).
UTC_PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))
TYPED_VALUES: list[tuple[str, str, Any, Any]] = [
    ("c_int2", "smallint", -32768, -32768),
    ("c_int4", "integer", 2_147_483_647, 2_147_483_647),
    ("c_int8", "bigint", -(2**63), -(2**63)),
    ("c_float4", "real", 1.5, 1.5),
    ("c_float8", "double precision", -2.25e300, -2.25e300),
    # Borealis keeps 15 significant digits of a numeric (SQLite's NUMERIC affinity
    # stores REAL; README "What works"), so the value stays within them.
    ("c_numeric", "numeric(20,6)", Decimal("-123456789.012345"), None),
    ("c_bool", "boolean", True, True),
    ("c_text", "text", "héllo, wörld ☃ 'quoted' \\ back", None),
    ("c_varchar", "varchar(50)", "varying", "varying"),
    ("c_char", "char(5)", "ab", "ab   "),
    ("c_bytea", "bytea", bytes(range(256)), None),
    ("c_date", "date", datetime.date(1999, 12, 31), None),
    ("c_timestamp", "timestamp", datetime.datetime(2024, 2, 29, 23, 59, 58, 123456), None),
    (
        "c_timestamptz",
        "timestamptz",
        datetime.datetime(2024, 7, 1, 12, 30, 0, 654321, tzinfo=UTC_PLUS_2),
        None,
    ),
    ("c_uuid", "uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), None),
    ("c_json", "json", Json({"a": [1, 2, None], "b": "x"}), {"a": [1, 2, None], "b": "x"}),
    ("c_jsonb", "jsonb", Jsonb({"k": {"nested": True}}), {"k": {"nested": True}}),
]


def expected(value: Any, back: Any) -> Any:
    return value if back is None else back


@pytest.fixture
def connection(pg_endpoint: PgEndpoint) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**pg_endpoint.connect_kwargs()) as conn:
        yield conn


def create_typed_table(conn: psycopg.Connection[Any], name: str) -> None:
    columns = ", ".join(f"{column} {sql_type}" for column, sql_type, _, _ in TYPED_VALUES)
    conn.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, {columns})")
    conn.commit()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_type_round_trips(
    connection: psycopg.Connection[Any],
    table_name: str,
    binary: bool,
) -> None:
    create_typed_table(connection, table_name)
    placeholder = "%b" if binary else "%t"
    columns = ", ".join(column for column, _, _, _ in TYPED_VALUES)
    marks = ", ".join([placeholder] * (len(TYPED_VALUES) + 1))
    values = [value for _, _, value, _ in TYPED_VALUES]
    with connection.cursor(binary=binary) as cursor:
        cursor.execute(f"INSERT INTO {table_name} (id, {columns}) VALUES ({marks})", [1, *values])
        cursor.execute(f"INSERT INTO {table_name} (id) VALUES ({placeholder})", [2])
        cursor.execute(f"SELECT {columns} FROM {table_name} WHERE id = {placeholder}", [1])
        row = cursor.fetchone()
        cursor.execute(f"SELECT {columns} FROM {table_name} WHERE id = {placeholder}", [2])
        nulls = cursor.fetchone()
    connection.commit()
    assert row is not None and nulls is not None
    for (column, _, value, back), got in zip(TYPED_VALUES, row, strict=True):
        assert got == expected(value.obj if isinstance(value, Json | Jsonb) else value, back), (
            column,
            got,
        )
    assert all(value is None for value in nulls)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_parameters_filter_typed_columns(
    connection: psycopg.Connection[Any],
    table_name: str,
    binary: bool,
) -> None:
    """A parameter compared with each typed column finds the row (the server infers
    the parameter's type from the column)."""
    create_typed_table(connection, table_name)
    placeholder = "%b" if binary else "%t"
    comparable = [entry for entry in TYPED_VALUES if entry[1] not in ("json",)]
    with connection.cursor(binary=binary) as cursor:
        columns = ", ".join(column for column, _, _, _ in comparable)
        marks = ", ".join([placeholder] * len(comparable))
        cursor.execute(
            f"INSERT INTO {table_name} (id, {columns}) VALUES (1, {marks})",
            [value for _, _, value, _ in comparable],
        )
        for column, _, value, _ in comparable:
            cursor.execute(f"SELECT id FROM {table_name} WHERE {column} = {placeholder}", [value])
            assert cursor.fetchall() == [(1,)], column


def test_commit_rollback_and_transaction_blocks(
    connection: psycopg.Connection[Any],
    table_name: str,
) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, note text)")
    connection.commit()
    connection.execute(f"INSERT INTO {table_name} VALUES (1, 'committed')")
    connection.commit()
    connection.execute(f"INSERT INTO {table_name} VALUES (2, 'rolled back')")
    connection.rollback()

    with connection.transaction():
        connection.execute(f"INSERT INTO {table_name} VALUES (3, 'block')")
    with pytest.raises(ZeroDivisionError), connection.transaction():
        connection.execute(f"INSERT INTO {table_name} VALUES (4, 'failed block')")
        raise ZeroDivisionError
    with connection.transaction():
        connection.execute(f"INSERT INTO {table_name} VALUES (5, 'outer')")
        with pytest.raises(ZeroDivisionError), connection.transaction():
            connection.execute(f"INSERT INTO {table_name} VALUES (6, 'savepoint')")
            raise ZeroDivisionError
    rows = connection.execute(f"SELECT id FROM {table_name} ORDER BY id").fetchall()
    assert rows == [(1,), (3,), (5,)]


def test_rows_invisible_to_others_until_commit(
    pg_endpoint: PgEndpoint,
    connection: psycopg.Connection[Any],
    table_name: str,
) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY)")
    connection.commit()
    with psycopg.connect(**pg_endpoint.connect_kwargs(), autocommit=True) as other:
        connection.execute(f"INSERT INTO {table_name} VALUES (1)")
        count = f"SELECT count(*) FROM {table_name}"
        assert other.execute(count).fetchone() == (0,)
        connection.commit()
        assert other.execute(count).fetchone() == (1,)


def test_executemany(connection: psycopg.Connection[Any], table_name: str) -> None:
    connection.execute(
        f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text, amount numeric(12,2))"
    )
    rows = [(index, f"name {index}", Decimal(index) / 4) for index in range(200)]
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table_name} VALUES (%s, %s, %s)", rows)
        assert cursor.rowcount == 200
    connection.commit()
    got = connection.execute(f"SELECT id, name, amount FROM {table_name} ORDER BY id").fetchall()
    assert got == rows


def test_copy_text_in_and_out(connection: psycopg.Connection[Any], table_name: str) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, note text)")
    rows = [(1, "plain"), (2, "tab\there\nnewline \\ backslash"), (3, None), (4, "")]
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {table_name} (id, note) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert cursor.rowcount == len(rows)
    connection.commit()
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {table_name} TO STDOUT") as copy:
            copy.set_types(["int4", "text"])
            got = sorted(copy.rows())
        assert got == rows
        with cursor.copy(f"COPY (SELECT id FROM {table_name} ORDER BY id) TO STDOUT") as copy:
            assert b"".join(copy) == b"1\n2\n3\n4\n"


def test_copy_csv_in_and_out(connection: psycopg.Connection[Any], table_name: str) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, note text)")
    data = b'1,plain\n2,"with, comma"\n3,"with ""quotes"""\n4,\n'
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {table_name} FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(data[:10])
            copy.write(data[10:])
        connection.commit()
        stored = cursor.execute(f"SELECT id, note FROM {table_name} ORDER BY id").fetchall()
        assert stored == [(1, "plain"), (2, "with, comma"), (3, 'with "quotes"'), (4, None)]
        query = f"COPY (SELECT id, note FROM {table_name} ORDER BY id) TO STDOUT WITH (FORMAT csv)"
        with cursor.copy(query) as copy:
            assert b"".join(copy) == data


def test_duplicate_key_is_unique_violation(
    connection: psycopg.Connection[Any],
    table_name: str,
) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, email text UNIQUE)")
    connection.execute(f"INSERT INTO {table_name} VALUES (1, 'a@example.com')")
    connection.commit()
    with pytest.raises(psycopg.errors.UniqueViolation) as raised:
        connection.execute(f"INSERT INTO {table_name} VALUES (1, 'b@example.com')")
    assert raised.value.diag.sqlstate == "23505"
    connection.rollback()
    with pytest.raises(psycopg.errors.UniqueViolation):
        connection.execute(f"INSERT INTO {table_name} VALUES (2, 'a@example.com')")
    connection.rollback()


@pytest.mark.parametrize(
    "sql", ["SELEC 1", "SELECT * FROM nowhere WHERE", "SELECT 1 FORM t", "SELECT (1"]
)
def test_bad_statement_is_syntax_error_with_position(
    connection: psycopg.Connection[Any], sql: str
) -> None:
    with pytest.raises(psycopg.errors.SyntaxError) as raised:
        connection.execute(sql)
    diag = raised.value.diag
    assert diag.sqlstate == "42601"
    assert diag.statement_position is not None
    assert 1 <= int(diag.statement_position) <= len(sql) + 1
    connection.rollback()
    assert connection.execute("SELECT 1").fetchone() == (1,)


def test_syntax_error_position_points_at_the_token(connection: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.SyntaxError) as raised:
        connection.execute("SELEC 1")
    assert raised.value.diag.statement_position == "1"
    connection.rollback()


def test_error_in_transaction_aborts_it(
    connection: psycopg.Connection[Any],
    table_name: str,
) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY)")
    connection.commit()
    connection.execute(f"INSERT INTO {table_name} VALUES (1)")
    with pytest.raises(psycopg.errors.UndefinedTable):
        connection.execute("SELECT * FROM no_such_table_anywhere")
    with pytest.raises(psycopg.errors.InFailedSqlTransaction) as raised:
        connection.execute("SELECT 1")
    assert raised.value.diag.sqlstate == "25P02"
    connection.rollback()
    assert connection.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (0,)


def test_undefined_column_and_not_null(
    connection: psycopg.Connection[Any],
    table_name: str,
) -> None:
    connection.execute(f"CREATE TABLE {table_name} (id integer PRIMARY KEY, name text NOT NULL)")
    connection.commit()
    with pytest.raises(psycopg.errors.UndefinedColumn):
        connection.execute(f"SELECT missing FROM {table_name}")
    connection.rollback()
    with pytest.raises(psycopg.errors.NotNullViolation):
        connection.execute(f"INSERT INTO {table_name} (id) VALUES (1)")
    connection.rollback()


SLOW_SQL = (
    "WITH RECURSIVE counter(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM counter "
    "WHERE n < 1000000000) SELECT count(*) FROM counter"
)
CANCEL_DEADLINE_S = 20.0


def test_cancel_gives_query_canceled_and_connection_stays_usable(
    pg_endpoint: PgEndpoint,
) -> None:
    """A CancelRequest (psycopg's cancel_safe) stops a slow statement with 57014.

    The canceller repeats until the statement returns: a cancel that arrives before
    the statement starts is ignored by the server, so one shot could miss."""
    with psycopg.connect(**pg_endpoint.connect_kwargs(), autocommit=True) as conn:
        finished = threading.Event()

        def cancel_until_finished() -> None:
            deadline = time.monotonic() + CANCEL_DEADLINE_S
            while not finished.wait(0.2) and time.monotonic() < deadline:
                conn.cancel_safe(timeout=5.0)
            if not finished.is_set():
                # The cancel did not work: cut the connection so the test fails now
                # instead of waiting minutes for the statement to end.
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

        canceller = threading.Thread(target=cancel_until_finished, daemon=True)
        canceller.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as raised:
                conn.execute(SLOW_SQL)
        finally:
            finished.set()
            canceller.join(CANCEL_DEADLINE_S)
        assert raised.value.diag.sqlstate == "57014"
        assert time.monotonic() - started < CANCEL_DEADLINE_S
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
