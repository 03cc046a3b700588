"""Catalog emulation on a real in-memory SQLite connection, checked against what
PostgreSQL 15 answers for the same schema (recorded from a throwaway server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from borealis.errors import SqlError
from compute_node.engine.functions import register, session_values
from compute_node.sql import catalog as pg_catalog
from compute_node.sql import client_queries

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "client_queries"
SCHEMA = """
CREATE TABLE p (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT);
CREATE TABLE t (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL DEFAULT 'x',
                amount NUMERIC(10,2), created TIMESTAMPTZ, parent INTEGER REFERENCES p(id));
CREATE UNIQUE INDEX t_name_key ON t(name);
CREATE INDEX t_created_idx ON t(created);
CREATE TABLE _borealis_internal (x INTEGER);
"""


@pytest.fixture
def connection() -> Iterator[apsw.Connection]:
    sqlite = apsw.Connection(":memory:")
    register(sqlite)
    sqlite.execute(SCHEMA)
    yield sqlite
    sqlite.close()


def rows(connection: apsw.Connection, sql: str, bindings: tuple[object, ...] = ()) -> list:
    return [tuple(each) for each in connection.execute(sql, bindings)]


def test_every_table_row_has_its_declared_columns(connection: apsw.Connection) -> None:
    for name, (columns, _) in pg_catalog.TABLES.items():
        declared = rows(connection, "SELECT name, type FROM pragma_table_info(?)", (name,))
        assert [" ".join(each).lower() for each in declared] == list(columns), name
        for row in rows(connection, f"SELECT * FROM {name}"):
            assert len(row) == len(columns), name


def test_pg_class_lists_user_relations_with_stable_oids(connection: apsw.Connection) -> None:
    found = dict(rows(connection, "SELECT relname, relkind FROM pg_class"))
    assert found == {
        "p": "r", "p_pkey": "i", "p_id_seq": "S",
        "t": "r", "t_pkey": "i", "t_name_key": "i", "t_created_idx": "i",
    }  # fmt: skip
    other = apsw.Connection(":memory:")
    register(other)
    other.execute(SCHEMA)
    oids = "SELECT relname, oid FROM pg_class ORDER BY relname"
    assert rows(connection, oids) == rows(other, oids)
    assert all(oid >= pg_catalog.OID_USER_MIN for _, oid in rows(connection, oids))


def test_pg_attribute_matches_postgresql(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT attnum, attname, atttypid, atttypmod, attnotnull, atthasdef, "
        "format_type(atttypid, atttypmod), "
        "(SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d "
        " WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum) "
        "FROM pg_attribute AS a WHERE attrelid = regclass('t') AND attnum > 0 ORDER BY attnum",
    )
    # PostgreSQL 15's answer for the same table.
    assert got == [
        (1, "id", 23, -1, 1, 0, "integer", None),
        (2, "name", 1043, 24, 1, 1, "character varying(20)", "'x'::character varying"),
        (3, "amount", 1700, 655366, 0, 0, "numeric(10,2)", None),
        (4, "created", 1184, -1, 0, 0, "timestamp with time zone", None),
        (5, "parent", 23, -1, 0, 0, "integer", None),
    ]


def test_serial_column_reads_as_nextval(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = regclass('p')",
    )
    assert got == [("nextval('p_id_seq'::regclass)",)]
    assert rows(connection, "SELECT pg_get_serial_sequence('p', 'id')") == [("public.p_id_seq",)]
    assert rows(connection, "SELECT pg_get_serial_sequence('t', 'id')") == [(None,)]


def test_indexes_match_postgresql(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT c.relname, i.indisprimary, i.indisunique, i.indkey, pg_get_indexdef(i.indexrelid),"
        " pg_get_indexdef(i.indexrelid, 0, 1), pg_get_indexdef(i.indexrelid, 1, 1) "
        "FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid ORDER BY 1",
    )
    assert got == [
        ("p_pkey", 1, 1, "1", "CREATE UNIQUE INDEX p_pkey ON public.p USING btree (id)",
         "CREATE UNIQUE INDEX p_pkey ON p USING btree (id)", "id"),
        ("t_created_idx", 0, 0, "4", "CREATE INDEX t_created_idx ON public.t USING btree (created)",
         "CREATE INDEX t_created_idx ON t USING btree (created)", "created"),
        ("t_name_key", 0, 1, "2", "CREATE UNIQUE INDEX t_name_key ON public.t USING btree (name)",
         "CREATE UNIQUE INDEX t_name_key ON t USING btree (name)", "name"),
        ("t_pkey", 1, 1, "1", "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)",
         "CREATE UNIQUE INDEX t_pkey ON t USING btree (id)", "id"),
    ]  # fmt: skip


def test_constraints_match_postgresql(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT conname, contype, conkey, confkey, confupdtype, pg_get_constraintdef(oid), "
        "regclass_name(conindid) FROM pg_constraint ORDER BY 1",
    )
    assert got == [
        ("p_pkey", "p", "{1}", None, " ", "PRIMARY KEY (id)", "p_pkey"),
        ("t_parent_fkey", "f", "{5}", "{1}", "a", "FOREIGN KEY (parent) REFERENCES p(id)", "p_pkey"),
        ("t_pkey", "p", "{1}", None, " ", "PRIMARY KEY (id)", "t_pkey"),
    ]  # fmt: skip


def test_added_primary_key_index_is_the_primary_key(connection: apsw.Connection) -> None:
    # What the translator emits for pgbench's ALTER TABLE ... ADD PRIMARY KEY.
    connection.execute(
        "CREATE TABLE pgbench_branches (bid INT NOT NULL, bbalance INT, filler CHAR(88));"
        "CREATE UNIQUE INDEX pgbench_branches_pkey ON pgbench_branches(bid);"
    )
    got = rows(
        connection,
        "SELECT conname, contype FROM pg_constraint WHERE conrelid = regclass('pgbench_branches')",
    )
    assert got == [("pgbench_branches_pkey", "p")]
    described = rows(
        connection,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = regclass('pgbench_branches') ORDER BY attnum",
    )
    assert described == [("integer",), ("integer",), ("character(88)",)]


def test_result_columns_declare_postgresql_types(connection: apsw.Connection) -> None:
    described = connection.execute(
        "SELECT oid, relname, relhasindex FROM pg_class"
    ).getdescription()
    assert described == (("oid", "oid"), ("relname", "name"), ("relhasindex", "bool"))


def test_scalar_functions_match_postgresql(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT current_schemas(1), current_schemas(0), format_type(1043, -1), "
        "format_type(1700, -1), format_type(1007, -1), format_type(1042, 14), "
        "format_type(18, -1), pg_size_pretty(12345678), quote_ident('a b'), quote_ident('ab'), "
        "quote_ident('user')",
    )
    assert got == [
        ("{pg_catalog,public}", "{public}", "character varying", "numeric", "integer[]",
         "character(10)", '"char"', "12 MB", '"a b"', "ab", '"user"'),
    ]  # fmt: skip
    ((version,),) = rows(connection, "SELECT version()")
    assert version.startswith("PostgreSQL 15.")


def test_regclass_of_a_missing_relation_is_42p01(connection: apsw.Connection) -> None:
    with pytest.raises(SqlError) as raised:
        rows(connection, "SELECT regclass('nope')")
    assert raised.value.sqlstate == "42P01"
    assert rows(connection, "SELECT to_regclass('nope'), to_regclass('public.t') > 0") == [
        (None, 1)
    ]


def test_settings_and_user_come_from_the_session(connection: apsw.Connection) -> None:
    values = session_values(connection)
    values.user = "alice"
    values.settings = {}
    assert rows(connection, "SELECT current_user(), current_setting('DateStyle')") == [
        ("alice", "ISO, MDY")
    ]
    rows(connection, "SELECT set_config('application_name', 'app', 0)")
    assert values.settings == {"application_name": "app"}
    assert rows(connection, "SELECT current_setting('application_name')") == [("app",)]
    assert rows(connection, "SELECT current_setting('nope', 1)") == [(None,)]
    with pytest.raises(SqlError):
        rows(connection, "SELECT current_setting('nope')")


def test_regex_match_uses_postgresql_syntax(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT pg_regex_match('pg_toast', '^pg_'), pg_regex_match('t', '^(t)$'), "
        "pg_regex_imatch('ABC', 'b'), pg_regex_match('a1', '[[:digit:]]'), "
        "pg_regex_match('x', 'y')",
    )
    assert got == [(1, 1, 1, 1, 0)]


def test_generate_series(connection: apsw.Connection) -> None:
    assert rows(connection, "SELECT generate_series FROM generate_series(1, 7, 3)") == [
        (1,), (4,), (7,)
    ]  # fmt: skip


def test_information_schema_columns(connection: apsw.Connection) -> None:
    got = rows(
        connection,
        "SELECT column_name, data_type, is_nullable, column_default, character_maximum_length "
        "FROM information_schema_columns WHERE table_name = 't' ORDER BY ordinal_position",
    )
    assert got == [
        ("id", "integer", "NO", None, None),
        ("name", "character varying", "NO", "'x'::character varying", 20),
        ("amount", "numeric", "YES", None, None),
        ("created", "timestamp with time zone", "YES", None, None),
        ("parent", "integer", "YES", None, None),
    ]


def test_catalog_follows_schema_changes(connection: apsw.Connection) -> None:
    assert rows(connection, "SELECT count(*) FROM pg_class WHERE relname = 'u'") == [(0,)]
    connection.execute("CREATE TABLE u (a INT)")
    assert rows(connection, "SELECT count(*) FROM pg_class WHERE relname = 'u'") == [(1,)]


def fixture_statements(name: str) -> list[str]:
    text = (FIXTURES / f"{name}.sql").read_text()
    statements = []
    for block in text.split("\n;\n"):
        lines = [line for line in block.splitlines() if not line.startswith("--")]
        if "".join(lines).strip():
            statements.append("\n".join(lines))
    return statements


def test_pgbench_partition_query_maps_and_runs(connection: apsw.Connection) -> None:
    connection.execute("CREATE TABLE pgbench_accounts (aid INT NOT NULL, bid INT)")
    (query,) = [s for s in fixture_statements("pgbench_run_prepared") if "lateral" in s]
    found = client_queries.lookup(query)
    assert found is not None
    sqlite_sql, literals, columns = found.sqlite_sql, found.literals, found.columns
    assert literals == ("pgbench_accounts",)
    assert [name for name, _ in columns] == ["n", "partstrat", "count"]
    assert rows(connection, sqlite_sql, literals) == [(1, None, 0)]


def test_psql_describe_queries_map_and_run(connection: apsw.Connection) -> None:
    oid = rows(connection, "SELECT regclass('p')")[0][0]
    statements = fixture_statements("psql_d_table") + fixture_statements("psql_du")
    matched = 0
    for statement in statements:
        found = client_queries.lookup(statement.replace("'16393'", f"'{oid}'"))
        if found is None:
            continue
        matched += 1
        sqlite_sql, literals, columns = found.sqlite_sql, found.literals, found.columns
        cursor = connection.execute(sqlite_sql, literals)
        result = [tuple(each) for each in cursor]
        assert all(len(row) == len(columns) for row in result)
        if "confrelid" in statement:
            assert result == [
                ("t_parent_fkey", "t", "FOREIGN KEY (parent) REFERENCES p(id)")
            ]  # fmt: skip
    assert matched == 6


def test_sqlalchemy_index_query_maps_and_runs(connection: apsw.Connection) -> None:
    (query,) = [s for s in fixture_statements("sqlalchemy_get_indexes") if "idx_cols" in s]
    found = client_queries.lookup(query)
    assert found is not None
    sqlite_sql, literals, columns = found.sqlite_sql, found.literals, found.columns
    oid = rows(connection, "SELECT regclass('t')")[0][0]
    client_parameters = (0, 1, 1, 0, 1, oid, "p", "u", "x")
    result = rows(connection, sqlite_sql, client_parameters + literals)
    named = [dict(zip([name for name, _ in columns], row, strict=True)) for row in result]
    assert [
        (r["relname"], r["indisunique"], r["elements"], r["has_constraint"]) for r in named
    ] == [
        ("t_created_idx", 0, "{created}", 0),
        ("t_name_key", 1, "{name}", 0),
    ]


def test_unknown_queries_do_not_match() -> None:
    assert client_queries.lookup("SELECT 1") is None


def test_every_function_translation_emits_is_registered() -> None:
    from compute_node.sql.rewrite import CATALOG_FUNCTIONS

    connection = apsw.Connection(":memory:")
    register(connection)
    registered = {row[0] for row in connection.execute("SELECT name FROM pragma_function_list")}
    assert set(CATALOG_FUNCTIONS) <= registered, set(CATALOG_FUNCTIONS) - registered


def test_pg_like_is_case_sensitive_with_backslash_escapes() -> None:
    connection = apsw.Connection(":memory:")
    register(connection)
    rows = connection.execute(
        "SELECT pg_like('Abc', 'A%'), pg_like('abc', 'A%'), pg_like('a_c', 'a\\_c'),"
        " pg_like('abc', 'a\\_c'), pg_like('abc', '_b_')"
    ).fetchall()
    assert rows == [(1, 0, 1, 0, 1)]


# SQLAlchemy 2's reflection queries and what they need of the catalog. The schema is
# what compute_node/sql/ddl.py writes for SQLAlchemy's create_all: every constraint
# named in the table's SQL.
REFLECTED_SCHEMA = """
CREATE TABLE "acct" ("id" INTEGER CONSTRAINT "acct_pkey" PRIMARY KEY AUTOINCREMENT,
  "name" VARCHAR(50) NOT NULL CONSTRAINT "acct_name_key" UNIQUE, "code" VARCHAR(10),
  "Region X" VARCHAR(10), CONSTRAINT "acct_code_region_uq" UNIQUE ("code", "Region X"));
CREATE TABLE "pay" ("id" INTEGER CONSTRAINT "pay_pkey" PRIMARY KEY AUTOINCREMENT,
  "acct_id" INTEGER CONSTRAINT "pay_acct_id_fkey" REFERENCES "acct" ("id") ON DELETE CASCADE,
  "code" VARCHAR(10), "region" VARCHAR(10),
  CONSTRAINT "pay_cr_fk" FOREIGN KEY ("code", "region") REFERENCES "acct" ("code", "Region X"));
CREATE TABLE "lonely" ("a" INTEGER, "b" INTEGER);
CREATE INDEX "ix_pay_desc" ON "pay" ("code", "region" DESC);
CREATE INDEX "ix_pay_part" ON "pay" ("acct_id") WHERE acct_id > 5;
"""


@pytest.fixture
def reflected() -> Iterator[apsw.Connection]:
    sqlite = apsw.Connection(":memory:")
    register(sqlite)
    sqlite.execute(REFLECTED_SCHEMA)
    yield sqlite
    sqlite.close()


def oid_of(connection: apsw.Connection, name: str) -> int:
    return int(rows(connection, "SELECT regclass(?)", (name,))[0][0])


def fixture_query(name: str, marker: str) -> str:
    (query,) = [each for each in fixture_statements(name) if marker in each]
    return query


def test_constraint_names_come_from_the_table_sql(reflected: apsw.Connection) -> None:
    found = rows(reflected, "SELECT conname, contype FROM pg_constraint ORDER BY conname")
    assert found == [
        ("acct_code_region_uq", "u"), ("acct_name_key", "u"), ("acct_pkey", "p"),
        ("pay_acct_id_fkey", "f"), ("pay_cr_fk", "f"), ("pay_pkey", "p"),
    ]  # fmt: skip
    # The index of a unique constraint has the constraint's name, as in PostgreSQL.
    index_names = rows(reflected, "SELECT relname FROM pg_class WHERE relkind = 'i'")
    assert ("acct_code_region_uq",) in index_names
    assert pg_catalog.constraint_names("CREATE TABLE t (a INT UNIQUE, b INT)") == {}


def test_tables_with_foreign_keys_have_triggers(reflected: apsw.Connection) -> None:
    # psql prints "Foreign-key constraints:" and "Referenced by:" only then.
    found = rows(reflected, "SELECT relname, relhastriggers FROM pg_class WHERE relkind = 'r'")
    assert sorted(found) == [("acct", 1), ("lonely", 0), ("pay", 1)]
    assert sorted(rows(reflected, "SELECT tablename, hastriggers FROM pg_tables")) == sorted(found)


def test_descending_and_partial_indexes(reflected: apsw.Connection) -> None:
    found = rows(
        reflected,
        "SELECT c.relname, i.indoption, i.indpred, pg_get_indexdef(i.indexrelid, 0, 1), "
        "pg_get_indexdef(i.indexrelid) FROM pg_index AS i JOIN pg_class AS c "
        "ON c.oid = i.indexrelid WHERE c.relname LIKE 'ix_%' ORDER BY 1",
    )
    assert found == [
        ("ix_pay_desc", "0 3", None,
         "CREATE INDEX ix_pay_desc ON pay USING btree (code, region DESC)",
         "CREATE INDEX ix_pay_desc ON public.pay USING btree (code, region DESC)"),
        ("ix_pay_part", "0", "(acct_id > 5)",
         "CREATE INDEX ix_pay_part ON pay USING btree (acct_id) WHERE acct_id > 5",
         "CREATE INDEX ix_pay_part ON public.pay USING btree (acct_id) WHERE (acct_id > 5)"),
    ]  # fmt: skip


def test_sqlalchemy_constraint_query_maps_for_any_number_of_tables(
    reflected: apsw.Connection,
) -> None:
    query = fixture_query("sqlalchemy_get_pk_constraint", "generate_subscripts")
    acct, pay = oid_of(reflected, "acct"), oid_of(reflected, "pay")
    one = client_queries.lookup(query)
    assert one is not None and one.parameter_count == 4 and one.literals == ()
    assert [name for name, _ in one.columns] == [
        "conrelid", "cols", "conname", "description", "indnkeyatts", "indnullsnotdistinct",
    ]  # fmt: skip
    assert rows(reflected, one.sqlite_sql, (1, "pg_catalog.pg_constraint", "p", pay)) == [
        (pay, "{id}", "pay_pkey", None, 1, 0)
    ]
    # Two tables: SQLAlchemy's expanding IN list has two placeholders, in both places.
    two_tables = query.replace("IN ($4)", "IN ($4, $5)")
    two = client_queries.lookup(two_tables)
    assert two is not None and two.parameter_count == 5
    assert "IN (?4, ?5)" in two.sqlite_sql
    # OIDs sent as text compare equal too (oid columns have numeric affinity).
    found = rows(reflected, two.sqlite_sql, (1, "pg_catalog.pg_constraint", "u", acct, str(pay)))
    assert found == [
        (acct, '{code,"Region X"}', "acct_code_region_uq", None, 2, 0),
        (acct, "{name}", "acct_name_key", None, 1, 0),
    ]  # fmt: skip


def test_sqlalchemy_index_query_renumbers_parameters_after_a_list(
    reflected: apsw.Connection,
) -> None:
    query = fixture_query("sqlalchemy_get_indexes", "idx_cols")
    shifted = (
        query.replace("$9", "$10").replace("$8", "$9").replace("$7", "$8")
        .replace("IN ($6)", "IN ($6, $7)")
    )  # fmt: skip
    found = client_queries.lookup(shifted)
    assert found is not None and found.parameter_count == 10
    acct, pay = oid_of(reflected, "acct"), oid_of(reflected, "pay")
    result = rows(reflected, found.sqlite_sql, (0, 1, 1, 0, 1, acct, pay, "p", "u", "x"))
    names = [name for name, _ in found.columns]
    assert [
        (r["relname"], r["has_constraint"], r["indoption"], r["filter_definition"],
         r["elements"], r["elements_is_expr"])
        for r in (dict(zip(names, row, strict=True)) for row in result)
    ] == [
        ("acct_code_region_uq", 1, "0 0", None, '{code,"Region X"}', "{f,f}"),
        ("acct_name_key", 1, "0", None, "{name}", "{f}"),
        ("ix_pay_desc", 0, "0 3", None, "{code,region}", "{f,f}"),
        ("ix_pay_part", 0, "0", "(acct_id > 5)", "{acct_id}", "{f}"),
    ]  # fmt: skip
    assert sorted({row[0] for row in result}) == sorted({acct, pay})


def test_a_query_that_uses_its_placeholders_differently_does_not_match() -> None:
    query = fixture_query("sqlalchemy_get_pk_constraint", "generate_subscripts")
    # The two IN lists of the captured text are the same parameter: here they differ.
    first = query.index("IN ($4)")
    changed = query[:first] + "IN ($5)" + query[first + len("IN ($4)") :]
    assert client_queries.lookup(changed) is None
    assert client_queries.lookup(query.replace("IN ($4)", "IN ($4, $5)")) is not None


def test_array_agg_writes_postgresql_array_text() -> None:
    connection = apsw.Connection(":memory:")
    register(connection)
    values = json.dumps(["b c", "", 'q\\"x', None, "null", "a", 2])
    found = rows(
        connection,
        "SELECT array_agg(value ORDER BY key DESC), bool_and(value IS NOT NULL), "
        "bool_or(value = 'a') FROM json_each(?)",
        (values,),
    )
    # Quoted: a space, the empty string, NULL spelled as text, quote and backslash
    # (escaped with a backslash); a SQL NULL is the bare word NULL.
    assert found == [(r'{2,a,"null",NULL,"q\\\"x","","b c"}', 0, 1)]
    empty = rows(connection, "SELECT array_agg(1), bool_and(1) FROM json_each('[]')")
    assert empty == [(None, None)]


def test_every_mapping_refers_to_parameters_its_captured_text_has() -> None:
    # SQLite counts parameters up to the highest ?n used: a mapping must use its
    # captured text's highest placeholder, and only placeholders that text has.
    for pg_sql, mapping in client_queries._PG_TO_SQLITE:
        shape, _, placeholder_max = client_queries._normalise(pg_sql)
        captured = {number for slot in client_queries._slots(shape) for number in slot}
        used = {int(found[1]) for found in client_queries._REFERENCE.finditer(mapping.sqlite_sql)
                if found[1] is not None}  # fmt: skip
        assert used <= captured, pg_sql[:60]
        assert placeholder_max == 0 or placeholder_max in used, pg_sql[:60]
        assert client_queries.lookup(pg_sql) is not None, pg_sql[:60]


def test_division_follows_postgresql_and_refuses_zero() -> None:
    connection = apsw.Connection(":memory:")
    register(connection)
    rows = connection.execute(
        "SELECT pg_div(7, 2), pg_div(-7, 2), pg_mod(7, 3), pg_mod(-7, 3), pg_div(1.0, 4),"
        " pg_div(NULL, 0)"
    ).fetchall()
    assert rows == [(3, -3, 1, -1, 0.25, None)]
    for sql in ("SELECT pg_div(1, 0)", "SELECT pg_mod(1, 0)", "SELECT pg_div(1.5, 0.0)"):
        with pytest.raises(SqlError) as raised:
            connection.execute(sql).fetchall()
        assert raised.value.sqlstate == "22012"


def test_postgresql_string_functions_sqlite_lacks() -> None:
    connection = apsw.Connection(":memory:")
    register(connection)
    rows = connection.execute(
        "SELECT repeat('ab', 3), lpad('a', 3, 'xy'), rpad('a', 4), lpad('abcd', 2),"
        " left('abc', 2), left('abc', -1), right('abc', 2), right('abc', -1),"
        " split_part('a,b,c', ',', 2), split_part('a,b', ',', 5), md5('a'), reverse('abc'),"
        " initcap('hello wORLD'), repeat(NULL, 2)"
    ).fetchall()
    # The answers PostgreSQL 15 gives for the same calls.
    assert rows == [
        ("ababab", "xya", "a   ", "ab", "ab", "ab", "bc", "bc", "b", "",
         "0cc175b9c0f1b6a831c399e269772661", "cba", "Hello World", None)
    ]  # fmt: skip
