"""The PostgreSQL -> SQLite translator: fixture pairs, real SQLite runs, the cache."""

from __future__ import annotations

import pathlib
import time

import apsw
import pytest

from borealis.errors import SqlError
from compute_node.engine.functions import register
from compute_node.sql import utility
from compute_node.sql.translate import Translated, Translator, split, translate_one

CASES = pathlib.Path(__file__).parent / "translate_cases"
CLIENT_QUERIES = pathlib.Path(__file__).parent.parent / "fixtures" / "client_queries"
NOW = "2026-01-02 03:04:05.123456+00"


class FakeSchema:
    """Column types as the session would read them from SQLite."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[tuple[str, str], ...]] = {
            "t": (("id", "int4"), ("a", "text"), ("b", "numeric")),
            "pgbench_accounts": (
                ("aid", "int4"),
                ("bid", "int4"),
                ("abalance", "int4"),
                ("filler", "bpchar"),
            ),
            "pgbench_history": (
                ("tid", "int4"),
                ("bid", "int4"),
                ("aid", "int4"),
                ("delta", "int4"),
                ("mtime", "timestamp"),
                ("filler", "bpchar"),
            ),
        }

    def columns_of(self, table: str) -> tuple[tuple[str, str], ...] | None:
        return self.tables.get(table)


def _cases() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for path in sorted(CASES.glob("*.txt")):
        source = None
        for line in path.read_text().splitlines():
            if line.startswith("pg: "):
                source = line[4:]
            elif line.startswith("sqlite: "):
                assert source is not None, line
                pairs.append((source, line[8:]))
                source = None
    return pairs


@pytest.mark.unit
@pytest.mark.parametrize(("source", "expected"), _cases())
def test_fixture_pairs(source: str, expected: str) -> None:
    translated = translate_one(source.replace("\\t", "\t"), FakeSchema())
    assert str(translated.sqlite) == expected.replace("\\t", "\t")


@pytest.mark.unit
def test_types_and_names() -> None:
    schema = FakeSchema()
    update = translate_one(
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", schema
    )
    assert update.parameter_types == ("int4", "int4") and not update.returns_rows
    insert = translate_one("INSERT INTO t (b, a) VALUES ($1, $2) RETURNING id, a", schema)
    assert insert.parameter_types == ("numeric", "text")
    assert insert.column_names == ("id", "a") and insert.column_types == ("int4", "text")
    select = translate_one(
        "SELECT *, 1, 3000000000, 1.5, 'x', count(*), sum(id), avg(id), now(), 1::int,"
        " $1::bigint AS p, true FROM t LIMIT $2",
        schema,
    )
    assert select.column_names == (
        "id", "a", "b", "?column?", "?column?", "?column?", "?column?", "count", "sum",
        "avg", "current_timestamp", "int4", "p", "?column?",
    )  # fmt: skip
    assert select.column_types == (
        "int4", "text", "numeric", "int4", "int8", "numeric", "text", "int8", "int8",
        "numeric", "timestamptz", "int4", "int8", "bool",
    )  # fmt: skip
    assert select.parameter_types == ("int8", "int8")
    assert translate_one("SELECT x FROM nowhere WHERE y = $1", schema).parameter_types == (
        "unknown",
    )


@pytest.mark.unit
def test_utility_statements() -> None:
    schema = FakeSchema()
    cases: list[tuple[str, str, object]] = [
        ("SET LOCAL statement_timeout = 0", "SET", utility.SetAction("statement_timeout", "0", True)),
        ("SET TIME ZONE 'UTC'", "SET", utility.SetAction("timezone", "UTC")),
        ("SET application_name TO DEFAULT", "SET", utility.SetAction("application_name", None)),
        ("RESET ALL", "RESET", utility.ResetAction(None)),
        ("SHOW ALL", "SHOW", utility.ShowAction("all")),
        ("START TRANSACTION READ ONLY", "BEGIN", utility.TransactionAction("begin", read_only=True)),
        ("ABORT", "ROLLBACK", utility.TransactionAction("rollback")),
        ("SAVEPOINT s1", "SAVEPOINT", utility.TransactionAction("savepoint", "s1")),
        ("RELEASE SAVEPOINT s1", "RELEASE", utility.TransactionAction("release", "s1")),
        ("ROLLBACK TO s1", "ROLLBACK", utility.TransactionAction("rollback_to", "s1")),
    ]  # fmt: skip
    for source, command, action in cases:
        translated = translate_one(source, schema)
        assert (translated.sqlite, translated.command, translated.action) == (None, command, action)
    copy = translate_one("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER, FREEZE)", schema)
    assert copy.action == utility.CopyAction("in", "t", ("a", "b"), "csv", ",", "", True)
    old_style = translate_one("copy t to stdout with csv header delimiter ';'", schema).action
    assert isinstance(old_style, utility.CopyAction)
    assert (old_style.direction, old_style.delimiter, old_style.header) == ("out", ";", True)
    assert isinstance(old_style.query, Translated) and old_style.query.column_names == (
        "id", "a", "b",
    )  # fmt: skip
    for bad, sqlstate in [
        ("COPY t FROM STDIN (FORMAT binary)", "0A000"),
        ("COPY t FROM '/etc/passwd'", "0A000"),
        ("CREATE FUNCTION f() RETURNS int AS $$ select 1 $$ LANGUAGE sql", "0A000"),
        ("CREATE EXTENSION hstore", "0A000"),
        ("CREATE TABLE s (id int, n SERIAL)", "0A000"),
        ("SELECT FROM WHERE", "42601"),
        ("SELEC 1", "42601"),
    ]:
        with pytest.raises(SqlError) as caught:
            translate_one(bad, schema)
        assert caught.value.sqlstate == sqlstate, bad


@pytest.mark.unit
def test_errors_and_split() -> None:
    with pytest.raises(SqlError) as caught:
        translate_one("SELECT 1 + FROM t WHERE", FakeSchema())
    assert caught.value.sqlstate == "42601" and caught.value.position is not None
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    with pytest.raises(SqlError) as caught:
        translate_one(deep, FakeSchema())
    assert caught.value.sqlstate in ("54001", "42601")
    assert split("select 1; -- c\n ; select 'a;b'; /* x; */ select $$;$$") == [
        "select 1",
        "select 'a;b'",
        "/* x; */ select $$;$$",
    ]
    assert split(" -- only a comment\n") == []
    with pytest.raises(SqlError) as caught:
        split("select 'abc")
    assert caught.value.sqlstate == "42601" and caught.value.position == 8


@pytest.mark.unit
def test_cache_parameterises_literals_safely() -> None:
    translator = Translator(FakeSchema())
    first = translator.translate(
        "UPDATE pgbench_accounts SET abalance = abalance + 12 WHERE aid = 34"
    )
    second = translator.translate(
        "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 99"
    )
    assert (
        first.sqlite
        == second.sqlite
        == ("UPDATE pgbench_accounts SET abalance = abalance + ?1 WHERE aid = ?2")
    )
    assert (first.literals, second.literals) == ((12, 34), (5, 99))
    assert translator.misses == 1
    ordinal = translator.translate("SELECT a, b FROM t ORDER BY 1")
    assert ordinal.sqlite is not None and "ORDER BY 1" in ordinal.sqlite and not ordinal.literals
    other = translator.translate("SELECT a, b FROM t ORDER BY 2")
    assert other.sqlite is not None and "ORDER BY 2" in other.sqlite
    projected = translator.translate("SELECT 7 FROM t WHERE id = 3")
    assert projected.column_types == ("int4",) and projected.literals == ()
    with_parameter = translator.translate("SELECT a FROM t WHERE id = $1 AND a = 'q'")
    assert with_parameter.sqlite == "SELECT a FROM t WHERE id = ?1 AND a = ?2"
    assert with_parameter.bindings([5], NOW) == (5, "q")
    now = translator.translate(
        "INSERT INTO pgbench_history (tid, delta, mtime) VALUES (1, -5, now())"
    )
    assert now.sqlite is not None and now.sqlite.endswith("VALUES (?1, -?2, ?3)")
    assert now.bindings([], NOW) == (1, 5, NOW)


def _per_call_us(function: object, source: str, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        function(source)  # type: ignore[operator]
    return (time.perf_counter() - started) / rounds * 1e6


@pytest.mark.unit
def test_cache_hit_is_much_cheaper_than_a_miss() -> None:
    schema = FakeSchema()
    translator = Translator(schema)
    source = "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 98765"
    translator.translate(source)
    hit_us = _per_call_us(translator.translate, source, 300)
    miss_us = _per_call_us(lambda text: translate_one(text, schema), source, 30)
    assert hit_us * 5 < miss_us, (hit_us, miss_us)


def _sqlite() -> apsw.Connection:
    """An in-memory database with the functions translations call, as on an instance."""
    connection = apsw.Connection(":memory:")
    register(connection)
    return connection


def _run(connection: apsw.Connection, translated: Translated, parameters: list[object]) -> list:
    assert translated.sqlite is not None
    return list(connection.execute(translated.sqlite, translated.bindings(parameters, NOW)))


@pytest.mark.unit
def test_pgbench_flow_on_sqlite() -> None:
    connection = _sqlite()
    schema = FakeSchema()
    translator = Translator(schema)
    for ddl in [
        "drop table if exists pgbench_accounts, pgbench_history",
        "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,"
        "filler char(22))",
        "create table pgbench_accounts(aid    int not null,bid int,abalance int,filler char(84))"
        " with (fillfactor=100)",
        "truncate table pgbench_accounts, pgbench_history",
        "alter table pgbench_accounts add primary key (aid)",
    ]:
        _run(connection, translate_one(ddl, schema), [])
    insert = translate_one(
        "insert into pgbench_accounts(aid,bid,abalance,filler) select aid, (aid - 1) / 10 + 1, 0,"
        " '' from generate_series(1, 50) as aid",
        schema,
    )
    _run(connection, insert, [])
    for delta, aid in [(10, 7), (-3, 7), (5, 9)]:
        simple = f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"
        _run(connection, translator.translate(simple), [])
        history = (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES "
            f"(1, 1, {aid}, {delta}, CURRENT_TIMESTAMP)"
        )
        _run(connection, translator.translate(history), [])
    select = translator.translate("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
    assert _run(connection, select, [7]) == [(7,)]
    totals = "SELECT (SELECT sum(abalance) FROM pgbench_accounts), sum(delta) FROM pgbench_history"
    assert _run(connection, translate_one(totals, schema), []) == [(12, 12)]
    stamps = _run(
        connection, translate_one("SELECT DISTINCT mtime FROM pgbench_history", schema), []
    )
    assert stamps == [(NOW,)]
    with pytest.raises(apsw.ConstraintError):
        _run(connection, translate_one("INSERT INTO pgbench_accounts (aid) VALUES (7)", schema), [])


@pytest.mark.unit
def test_application_statements_on_sqlite() -> None:
    connection = _sqlite()
    schema = FakeSchema()
    schema.tables["users"] = (("id", "int4"), ("name", "varchar"), ("amount", "numeric"))
    for ddl in [
        "CREATE TABLE users (id SERIAL NOT NULL, name VARCHAR(30) NOT NULL UNIQUE, amount"
        " NUMERIC(10, 2), created TIMESTAMP WITH TIME ZONE DEFAULT now(), PRIMARY KEY (id))",
        "CREATE TABLE addr (id SERIAL NOT NULL, user_id INTEGER NOT NULL, PRIMARY KEY (id),"
        " FOREIGN KEY(user_id) REFERENCES users (id))",
    ]:
        _run(connection, translate_one(ddl, schema), [])
    declared = {row[1]: row[2] for row in connection.execute("PRAGMA table_info(users)")}
    assert declared == {
        "id": "INTEGER", "name": "VARCHAR(30)", "amount": "NUMERIC(10,2)", "created": "TIMESTAMPTZ",
    }  # fmt: skip
    insert = translate_one(
        "INSERT INTO users (name, amount) VALUES ($1, $2) RETURNING users.id", schema
    )
    assert insert.parameter_types == ("varchar", "numeric")
    ids = [_run(connection, insert, [name, 1.5])[0][0] for name in ("ann", "bob", "Cy")]
    assert ids == [1, 2, 3]
    upsert = translate_one(
        "INSERT INTO users (name, amount) VALUES ($1, $2) ON CONFLICT (name)"
        " DO UPDATE SET amount = users.amount + EXCLUDED.amount",
        schema,
    )
    _run(connection, upsert, ["ann", 2])
    case_sensitive = translate_one("SELECT name FROM users WHERE name LIKE 'c%' ORDER BY 1", schema)
    assert _run(connection, case_sensitive, []) == []
    insensitive = translate_one("SELECT name, amount FROM users WHERE name ILIKE 'A%'", schema)
    assert _run(connection, insensitive, []) == [("ann", 3.5)]
    series = translate_one("SELECT sum(g) FROM generate_series(10, 1, -3) AS g", schema)
    assert _run(connection, series, []) == [(22,)]
    epoch = translate_one("SELECT extract(epoch from now())::bigint", schema)
    assert _run(connection, epoch, []) == [(1767323045,)]


@pytest.mark.unit
def test_captured_client_queries_translate_or_refuse_cleanly() -> None:
    if not CLIENT_QUERIES.exists():
        pytest.skip("no captured client queries")
    schema = FakeSchema()
    translated = refused = 0
    for path in sorted(CLIENT_QUERIES.glob("*.sql")):
        for block in path.read_text().split("-- " + "-" * 63):
            lines = [line for line in block.splitlines() if not line.startswith("-- ")]
            for statement in split("\n".join(lines)):
                try:
                    translate_one(statement, schema)
                    translated += 1
                except SqlError as error:
                    # Only "not supported" or a catalog feature, never a crash.
                    assert error.sqlstate in ("0A000", "3F000"), (path.name, statement, error)
                    refused += 1
    assert translated > refused
