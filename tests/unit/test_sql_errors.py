"""compute_node/sql/errors: SQLite's refusals carry PostgreSQL's SQLSTATEs."""

from __future__ import annotations

import apsw
import pytest

from compute_node.engine.sessions import StatementError
from compute_node.sql.errors import sql_error_of

pytestmark = pytest.mark.unit

SCHEMA = """
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE t (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    amount INTEGER CHECK (amount >= 0),
    parent INTEGER REFERENCES parent (id)
);
INSERT INTO parent VALUES (1);
INSERT INTO t VALUES (1, 'a', 1, 1);
"""


def refusal(sql: str) -> StatementError:
    connection = apsw.Connection(":memory:")
    connection.pragma("foreign_keys", True)
    connection.execute(SCHEMA)
    try:
        connection.execute(sql)
    except apsw.Error as error:
        return StatementError(str(error), error)
    raise AssertionError(f"SQLite accepted {sql!r}")


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("INSERT INTO t VALUES (1, 'b', 1, 1)", "23505", 'unique constraint "t_pkey"'),
        ("INSERT INTO t VALUES (2, 'a', 1, 1)", "23505", 'unique constraint "t_name_key"'),
        ("INSERT INTO t VALUES (2, NULL, 1, 1)", "23502", 'column "name" of relation "t"'),
        ("INSERT INTO t VALUES (2, 'b', -1, 1)", "23514", "check constraint"),
        ("INSERT INTO t VALUES (2, 'b', 1, 99)", "23503", "foreign key"),
        ("SELECT * FROM missing", "42P01", 'relation "missing" does not exist'),
        ("SELECT nope FROM t", "42703", 'column "nope" does not exist'),
        ("SELEC 1", "42601", "syntax error"),
        ("CREATE TABLE t (a INTEGER)", "42P07", 'relation "t" already exists'),
        ("SELECT no_such_function(1)", "42883", "function no_such_function does not exist"),
    ],
)
def test_sqlite_errors_map_to_postgresql_sqlstates(sql: str, sqlstate: str, message: str) -> None:
    mapped = sql_error_of(refusal(sql))
    assert mapped.sqlstate == sqlstate, mapped
    assert message in mapped.message


def test_an_error_without_a_known_shape_is_an_internal_error_with_sqlites_message() -> None:
    mapped = sql_error_of(StatementError("something odd happened"))
    assert mapped.sqlstate == "XX000"
    assert "something odd happened" in mapped.message
