"""PostgreSQL catalog tables and functions on an SQLite connection.

`register(connection)` adds, to one apsw connection:
- eponymous read-only virtual tables named as PostgreSQL's catalog (pg_class,
  pg_attribute, ..., information_schema_tables, ...), whose rows
  compute_node/sql/catalog.py computes from the connection's own schema on each
  scan (cached per schema_version, per connection); their columns are declared
  with PostgreSQL type names, so a result column's declared type says its type;
- generate_series(start, stop[, step]) as a table-valued function;
- the scalar functions clients call (version(), current_setting(), format_type(),
  regclass(), pg_regex_match(), ...);
- the aggregates array_agg (PostgreSQL's array text form, '{a,"b c"}'), bool_and
  and bool_or; SQLite's `agg(x ORDER BY y)` orders what they see.

Session values. A connection is shared by sessions, but runs one job of one
session at a time. Before each job the session layer sets the values its
statements read: `session_values(connection).user = ...`, `.database`,
`.backend_pid`, and `.settings` (the session's own dict of settings, which
set_config() changes in place, so a SET made through set_config() stays with the
session). The functions read them when called, on the connection's thread.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw
import apsw.ext

from borealis.errors import SqlError
from borealis.pgwire import types as pg_types
from compute_node.sql import catalog as pg_catalog
from compute_node.sql.catalog import Catalog, Column, ForeignKey, Index, Schema, Table

VERSION_TEXT = (
    f"PostgreSQL {pg_catalog.SERVER_VERSION} (Borealis 0.1.0) on x86_64-pc-linux-gnu, "
    "compiled by gcc, 64-bit"
)
REGEX_CACHE_MAX = 256
ARRAY_AGG_ELEMENTS_MAX = 1_000_000
GENERATE_SERIES_ROWS_MAX = 100_000_000


@dataclass(slots=True)
class SessionValues:
    """What the running job's session contributes to function results."""

    user: str = "postgres"
    database: str = "postgres"
    backend_pid: int = 0
    settings: dict[str, str] = field(default_factory=dict)


_sessions_lock = threading.Lock()
_sessions: weakref.WeakKeyDictionary[apsw.Connection, SessionValues] = weakref.WeakKeyDictionary()


def session_values(connection: apsw.Connection) -> SessionValues:
    """The mutable session values of a connection (created on first use)."""
    with _sessions_lock:
        found = _sessions.get(connection)
        if found is None:
            found = _sessions[connection] = SessionValues()
        return found


def read_schema(connection: apsw.Connection) -> Schema:
    """The user tables and views of the main database, from sqlite_schema and pragmas."""
    tables: list[Table] = []
    rows = connection.execute(
        "SELECT name, type, sql FROM main.sqlite_schema WHERE type IN ('table', 'view') "
        "ORDER BY name"
    ).fetchall()
    for name, kind, sql in rows:
        if pg_catalog.is_hidden(name):
            continue
        tables.append(_read_table(connection, name, "r" if kind == "table" else "v", sql or ""))
    return Schema(tuple(tables))


def _read_table(connection: apsw.Connection, name: str, kind: str, sql: str) -> Table:
    columns = tuple(
        Column(column, declared or "", bool(not_null), default, primary)
        for _, column, declared, not_null, default, primary, hidden in connection.execute(
            'SELECT cid, name, type, "notnull", dflt_value, pk, hidden '
            "FROM pragma_table_xinfo(?) ORDER BY cid",
            (name,),
        )
        if hidden == 0
    )
    if kind != "r":
        return Table(name, kind, sql, columns)
    return Table(
        name,
        kind,
        sql,
        columns,
        _read_indexes(connection, name),
        _read_foreign_keys(connection, name),
    )


def _read_indexes(connection: apsw.Connection, table: str) -> tuple[Index, ...]:
    indexes: list[Index] = []
    listed = connection.execute(
        'SELECT l.name, l."unique", l.origin, l.partial, s.sql FROM pragma_index_list(?) AS l '
        "LEFT JOIN main.sqlite_schema AS s ON s.type = 'index' AND s.name = l.name ORDER BY l.name",
        (table,),
    ).fetchall()
    for index, unique, origin, partial, sql in listed:
        keys = connection.execute(
            'SELECT name, "desc" FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno', (index,)
        ).fetchall()
        columns = tuple(column for column, _ in keys)
        descending = tuple(bool(flag) for _, flag in keys)
        indexes.append(Index(index, bool(unique), origin, columns, bool(partial), sql, descending))
    return tuple(indexes)


def _read_foreign_keys(connection: apsw.Connection, table: str) -> tuple[ForeignKey, ...]:
    grouped: dict[int, list[tuple[Any, ...]]] = {}
    for row in connection.execute(
        'SELECT id, seq, "table", "from", "to", on_update, on_delete '
        "FROM pragma_foreign_key_list(?) ORDER BY id, seq",
        (table,),
    ):
        grouped.setdefault(row[0], []).append(row)
    return tuple(
        ForeignKey(
            tuple(each[3] for each in parts),
            parts[0][2],
            tuple(each[4] for each in parts),
            parts[0][5] or "NO ACTION",
            parts[0][6] or "NO ACTION",
        )
        for _, parts in sorted(grouped.items())
    )


class _CatalogCache:
    """The Catalog of one connection, rebuilt when its schema_version moves."""

    def __init__(self, connection: apsw.Connection) -> None:
        # A weak reference: the connection owns its functions, not the other way round.
        self._connection = weakref.ref(connection)
        self._schema_version = -1
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog:
        connection = self._connection()
        assert connection is not None, "catalog used after its connection closed"
        ((version,),) = connection.execute("PRAGMA main.schema_version").fetchall()
        if self._catalog is None or version != self._schema_version:
            self._catalog = Catalog.of(read_schema(connection))
            self._schema_version = version
        values = session_values(connection)
        self._catalog.user = values.user
        self._catalog.database = values.database
        return self._catalog


class _CatalogModule:
    """An apsw virtual table module serving one catalog table (eponymous)."""

    def __init__(self, name: str, cache: _CatalogCache) -> None:
        self.name = name
        self.cache = cache
        columns, _ = pg_catalog.TABLES[name]
        self.schema_sql = f"CREATE TABLE x({', '.join(_column_sql(each) for each in columns)})"

    def Create(self, *arguments: Any) -> tuple[str, _CatalogTable]:  # noqa: N802
        return self.schema_sql, _CatalogTable(self)

    Connect = Create


def _column_sql(definition: str) -> str:
    name, declared = definition.split(" ", 1)
    return f'"{name}" {declared}'


class _CatalogTable:
    def __init__(self, module: _CatalogModule) -> None:
        self.module = module

    def BestIndex(self, *arguments: Any) -> None:  # noqa: N802
        # Catalog tables are small: a full scan, SQLite filters.
        return None

    def Open(self) -> _CatalogCursor:  # noqa: N802
        return _CatalogCursor(self.module)

    def Disconnect(self) -> None:  # noqa: N802
        return None

    Destroy = Disconnect


class _CatalogCursor:
    def __init__(self, module: _CatalogModule) -> None:
        self.module = module
        self.rows: list[tuple[Any, ...]] = []
        self.position = 0

    def Filter(self, *arguments: Any) -> None:  # noqa: N802
        self.rows = self.module.cache.catalog().rows(self.module.name)
        self.position = 0

    def Eof(self) -> bool:  # noqa: N802
        return self.position >= len(self.rows)

    def Rowid(self) -> int:  # noqa: N802
        return self.position

    def Column(self, number: int) -> Any:  # noqa: N802
        if number == -1:
            return self.position
        return self.rows[self.position][number]

    def Next(self) -> None:  # noqa: N802
        self.position += 1

    def Close(self) -> None:  # noqa: N802
        self.rows = []


def generate_series(start: int, stop: int, step: int = 1) -> Iterator[tuple[int]]:
    """PostgreSQL's generate_series over integers; its column is named generate_series."""
    if step == 0:
        raise SqlError("step size cannot equal zero", "22023")
    count = max(0, (stop - start) // step + 1)
    if count > GENERATE_SERIES_ROWS_MAX:
        raise SqlError("generate_series would return too many rows", "54000")
    for value in range(start, stop + (1 if step > 0 else -1), step):
        yield (value,)


generate_series.columns = ("generate_series",)  # type: ignore[attr-defined]
generate_series.column_access = apsw.ext.VTColumnAccess.By_Index  # type: ignore[attr-defined]


def register(connection: apsw.Connection) -> None:
    """Adds the catalog tables and functions to a connection."""
    cache = _CatalogCache(connection)
    for name in pg_catalog.TABLES:
        connection.create_module(
            name, _CatalogModule(name, cache), eponymous=True, eponymous_only=True, read_only=True
        )
    apsw.ext.make_virtual_module(connection, "generate_series", generate_series)
    for name, (function, arity, deterministic) in _functions(connection, cache).items():
        for count in arity:
            connection.create_scalar_function(name, function, count, deterministic=deterministic)
    for name, factory in _AGGREGATES.items():
        connection.create_aggregate_function(name, factory, 1)


def _functions(
    connection: apsw.Connection, cache: _CatalogCache
) -> dict[str, tuple[Callable[..., Any], tuple[int, ...], bool]]:
    values = session_values(connection)

    def session() -> SessionValues:
        return values

    def current_setting(name: str, missing_ok: int = 0) -> str | None:
        return _setting(session(), name, bool(missing_ok))

    def set_config(name: str, value: str | None, is_local: int) -> str | None:
        # is_local (transaction-scoped) is kept for the session like a plain SET.
        session().settings[name] = "" if value is None else str(value)
        return session().settings[name]

    catalog = cache.catalog
    constant = False
    return {
        "version": (lambda: VERSION_TEXT, (0,), True),
        "current_schema": (lambda: "public", (0,), True),
        "current_schemas": (lambda implicit: "{pg_catalog,public}" if implicit else "{public}", (1,), True),
        "current_database": (lambda: session().database, (0,), constant),
        "current_user": (lambda: session().user, (0,), constant),
        "session_user": (lambda: session().user, (0,), constant),
        "current_role": (lambda: session().user, (0,), constant),
        "current_catalog": (lambda: session().database, (0,), constant),
        "pg_backend_pid": (lambda: session().backend_pid, (0,), constant),
        "current_setting": (current_setting, (1, 2), constant),
        "set_config": (set_config, (3,), constant),
        "format_type": (pg_catalog.format_type, (2,), True),
        "pg_get_expr": (lambda expression, relation, pretty=0: expression, (2, 3), True),
        "pg_get_indexdef": (lambda oid, column=0, pretty=0: _index_definition(catalog(), oid, column, pretty), (1, 3), constant),
        "pg_get_constraintdef": (lambda oid, pretty=0: _constraint_definition(catalog(), oid), (1, 2), constant),
        "pg_get_viewdef": (lambda relation, pretty=0: _view_definition(catalog(), relation), (1, 2), constant),
        "pg_get_serial_sequence": (lambda table, column: catalog().serial_sequence(_bare_name(table), column), (2,), constant),
        "pg_table_is_visible": (lambda oid: 1, (1,), True),
        "pg_type_is_visible": (lambda oid: 1, (1,), True),
        "pg_collation_is_visible": (lambda oid: 1, (1,), True),
        "pg_get_userbyid": (lambda oid: session().user, (1,), constant),
        "obj_description": (lambda oid, kind=None: None, (1, 2), True),
        "col_description": (lambda oid, column: None, (2,), True),
        "shobj_description": (lambda oid, kind: None, (2,), True),
        "has_table_privilege": (lambda *arguments: 1, (2, 3), True),
        "has_schema_privilege": (lambda *arguments: 1, (2, 3), True),
        "has_database_privilege": (lambda *arguments: 1, (2, 3), True),
        "pg_has_role": (lambda *arguments: 1, (2, 3), True),
        "pg_encoding_to_char": (lambda number: "UTF8" if number == pg_catalog.ENCODING_UTF8 else "SQL_ASCII", (1,), True),
        "quote_ident": (pg_catalog.quote_ident, (1,), True),
        "pg_relation_size": (lambda oid, fork="main": _relation_size(connection, catalog(), oid), (1, 2), constant),
        "pg_table_size": (lambda oid: _relation_size(connection, catalog(), oid), (1,), constant),
        "pg_total_relation_size": (lambda oid: _relation_size(connection, catalog(), oid), (1,), constant),
        "pg_database_size": (lambda name: _database_size(connection), (1,), constant),
        "pg_size_pretty": (_size_pretty, (1,), True),
        "array_to_string": (_array_to_string, (2, 3), True),
        "pg_regex_match": (lambda text, pattern: _regex_match(text, pattern, 0), (2,), True),
        "pg_regex_imatch": (lambda text, pattern: _regex_match(text, pattern, re.IGNORECASE), (2,), True),
        "regclass": (lambda value: _regclass(catalog(), value, missing_ok=False), (1,), constant),
        "to_regclass": (lambda value: _regclass(catalog(), value, missing_ok=True), (1,), constant),
        "regclass_name": (lambda value: _regclass_text(catalog(), value), (1,), constant),
        "regtype": (lambda value: _regtype(value, missing_ok=False), (1,), True),
        "to_regtype": (lambda value: _regtype(value, missing_ok=True), (1,), True),
        "regtype_name": (_regtype_text, (1,), True),
        "regproc": (lambda value: value, (1,), True),
        "regproc_name": (lambda value: None if value is None else str(value), (1,), True),
        "regnamespace": (_namespace_oid, (1,), True),
        "regnamespace_name": (_namespace_name, (1,), True),
        "pg_like": (_like, (2,), True),
        "pg_div": (_divide, (2,), True),
        "pg_instant": (_instant, (1,), True),
        # PostgreSQL string functions SQLite lacks (SQLite has concat, instr, trim).
        "repeat": (lambda text, count: None if text is None or count is None else str(text) * max(int(count), 0), (2,), True),
        "lpad": (lambda text, length, fill=" ": _pad(text, length, fill, left=True), (2, 3), True),
        "rpad": (lambda text, length, fill=" ": _pad(text, length, fill, left=False), (2, 3), True),
        "left": (lambda text, count: _left(text, count), (2,), True),
        "right": (lambda text, count: _right(text, count), (2,), True),
        "split_part": (_split_part, (3,), True),
        "md5": (lambda text: None if text is None else hashlib.md5(_bytes(text)).hexdigest(), (1,), True),
        "reverse": (lambda text: None if text is None else str(text)[::-1], (1,), True),
        "initcap": (lambda text: None if text is None else re.sub(r"[A-Za-z0-9]+", lambda word: word[0].capitalize(), str(text)), (1,), True),
        "pg_mod": (_modulo, (2,), True),
        "oid": (lambda value: None if value is None else int(value), (1,), True),
        "pg_is_in_recovery": (lambda: 0 if connection.readonly("main") is False else 1, (0,), constant),
        "txid_current": (lambda: connection.data_version(), (0,), constant),
        "gen_random_uuid": (lambda: str(uuid.uuid4()), (0,), False),
        "pg_partition_root": (lambda oid: None, (1,), True),
        "pg_relation_is_publishable": (lambda oid: 0, (1,), True),
    }  # fmt: skip


def _setting(values: SessionValues, name: str, missing_ok: bool) -> str | None:
    for store in (values.settings, pg_catalog.DEFAULT_SETTINGS):
        for key, value in store.items():
            if key.lower() == name.lower():
                return value
    if missing_ok:
        return None
    raise SqlError(f'unrecognized configuration parameter "{name}"', "42704")


def _bare_name(value: str) -> str:
    """A relation name without its schema and quotes ('public."T"' -> 'T')."""
    text = str(value).strip()
    match = re.fullmatch(r'(?:(?:"[^"]*"|[^."]+)\.)?("([^"]|"")*"|[^."]+)', text)
    if match is None:
        return text
    last = match[1]
    if last.startswith('"'):
        return last[1:-1].replace('""', '"')
    return last.lower()


def _regclass(catalog: Catalog, value: Any, *, missing_ok: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    name = _bare_name(value)
    oid = catalog.class_oid(name)
    if oid is None and not missing_ok:
        raise SqlError(f'relation "{value}" does not exist', "42P01")
    return oid


def _regclass_text(catalog: Catalog, value: Any) -> str | None:
    """A relation OID as ::regclass::text shows it: its name, or the number."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip().isdigit():
        return value
    return catalog.class_name(int(value)) or str(value)


_TYPE_ALIASES = {
    "integer": "int4", "int": "int4", "bigint": "int8", "smallint": "int2", "boolean": "bool",
    "real": "float4", "double precision": "float8", "character varying": "varchar",
    "character": "bpchar", "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz", "time without time zone": "time",
    "decimal": "numeric", '"char"': "char",
}  # fmt: skip


def _regtype(value: Any, *, missing_ok: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    text = " ".join(str(value).strip().lower().split())
    text = re.sub(r"^pg_catalog\.", "", text)
    array = text.endswith("[]")
    base = _TYPE_ALIASES.get(text.removesuffix("[]"), text.removesuffix("[]"))
    found = pg_catalog._OID_BY_NAME.get(base)
    if found is not None and array:
        found = next((t.array_oid for t in pg_catalog.TYPES if t.oid == found), None) or None
    if found is None and not missing_ok:
        raise SqlError(f'type "{value}" does not exist', "42704")
    return found


def _regtype_text(value: Any) -> str | None:
    if value is None:
        return None
    return pg_catalog.format_type(int(value), -1)


def _namespace_name(value: Any) -> str | None:
    names = {
        pg_catalog.NAMESPACE_CATALOG_OID: "pg_catalog",
        pg_catalog.NAMESPACE_PUBLIC_OID: "public",
        pg_catalog.NAMESPACE_INFORMATION_SCHEMA_OID: "information_schema",
        pg_catalog.NAMESPACE_TOAST_OID: "pg_toast",
    }
    return None if value is None else names.get(int(value), str(value))


def _index_definition(catalog: Catalog, oid: int | None, column: int, pretty: int) -> str | None:
    key = None if oid is None else catalog.key_by_oid(int(oid))
    if key is None:
        return None
    return catalog.index_definition(key, int(column or 0), qualified=not pretty)


def _constraint_definition(catalog: Catalog, oid: int | None) -> str | None:
    found = None if oid is None else catalog.constraint_by_oid(int(oid))
    if found is None:
        return None
    _, _, contype, detail = found
    return catalog.constraint_definition(contype, detail)


def _view_definition(catalog: Catalog, relation: Any) -> str | None:
    oid = _regclass(catalog, relation, missing_ok=True)
    name = None if oid is None else catalog.class_name(oid)
    table = None if name is None else catalog.table(name)
    if table is None or table.kind != "v":
        return None
    return pg_catalog._view_body(table.sql)


def _relation_size(connection: apsw.Connection, catalog: Catalog, oid: Any) -> int:
    name = catalog.class_name(int(oid)) if oid is not None else None
    if name is None:
        return 0
    try:
        rows = connection.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?", (name,)
        ).fetchall()
    except apsw.SQLError:
        # dbstat is an optional SQLite feature; without it sizes read as zero.
        return 0
    return int(rows[0][0])


def _database_size(connection: apsw.Connection) -> int:
    ((pages,),) = connection.execute("PRAGMA main.page_count").fetchall()
    ((size,),) = connection.execute("PRAGMA main.page_size").fetchall()
    return int(pages) * int(size)


def _size_pretty(size: int | float | None) -> str | None:
    """pg_size_pretty: bytes until 10 kB, then kB, MB, ... rounded half up."""
    if size is None:
        return None
    value = int(size)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 10 * 1024 or unit == "TB":
            return f"{value} {unit}"
        value = (value + 512) // 1024 if value >= 0 else -((-value + 512) // 1024)
    return f"{value} PB"


def _array_to_string(array: str | None, delimiter: str, null: str | None = None) -> str | None:
    """array_to_string over the text form of an array ('{a,b}')."""
    if array is None:
        return None
    text = str(array).strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if not text:
        return ""
    parts = [each.strip('"') for each in text.split(",")]
    kept = [null if each == "NULL" else each for each in parts]
    return delimiter.join(each for each in kept if each is not None)


def _namespace_oid(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    oids = {
        "pg_catalog": pg_catalog.NAMESPACE_CATALOG_OID,
        "public": pg_catalog.NAMESPACE_PUBLIC_OID,
        "information_schema": pg_catalog.NAMESPACE_INFORMATION_SCHEMA_OID,
        "pg_toast": pg_catalog.NAMESPACE_TOAST_OID,
    }
    found = oids.get(str(value).strip('"'))
    if found is None:
        raise SqlError(f'schema "{value}" does not exist', "3F000")
    return found


def _instant(value: Any) -> str | None:
    """A date, timestamp or timestamptz text in any of PostgreSQL's forms (zone
    '+02', '+05:30', 'Z' or none; any fraction) as the UTC text SQLite's date
    functions read ('YYYY-MM-DD HH:MM:SS.ffffff'), for EXTRACT and casts."""
    if value is None:
        return None
    moment = pg_types.parse_timestamp(str(value), "timestamp with time zone")
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _pad(text: Any, length: Any, fill: Any, left: bool) -> str | None:
    """lpad/rpad: pad with `fill` repeated, or cut, to `length` characters."""
    if text is None or length is None or fill is None:
        return None
    text, length, fill = str(text), max(int(length), 0), str(fill)
    if len(text) >= length or not fill:
        return text[:length]
    padding = (fill * (length // len(fill) + 1))[: length - len(text)]
    return padding + text if left else text + padding


def _left(text: Any, count: Any) -> str | None:
    """left(s, n): the first n characters; a negative n drops the last -n."""
    if text is None or count is None:
        return None
    return str(text)[: int(count)]


def _right(text: Any, count: Any) -> str | None:
    """right(s, n): the last n characters; a negative n drops the first -n."""
    if text is None or count is None:
        return None
    text, count = str(text), int(count)
    return text[-count:] if count != 0 else ""


def _split_part(text: Any, delimiter: Any, field: Any) -> str | None:
    if text is None or delimiter is None or field is None:
        return None
    field = int(field)
    if field == 0:
        raise SqlError("field position must not be zero", "22023")
    parts = str(text).split(str(delimiter)) if delimiter != "" else [str(text)]
    index = field - 1 if field > 0 else len(parts) + field
    return parts[index] if 0 <= index < len(parts) else ""


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _divide(left: Any, right: Any) -> Any:
    """PostgreSQL's `/`: integer division truncates toward zero; 0 is an error."""
    operands = _operands(left, right)
    if operands is None:
        return None
    left, right = operands
    if isinstance(left, int) and isinstance(right, int):
        quotient = abs(left) // abs(right)
        return quotient if (left < 0) == (right < 0) else -quotient
    return left / right


def _modulo(left: Any, right: Any) -> Any:
    """PostgreSQL's `%`: the sign of the dividend; 0 is an error."""
    operands = _operands(left, right)
    if operands is None:
        return None
    left, right = operands
    if isinstance(left, int) and isinstance(right, int):
        remainder = abs(left) % abs(right)
        return remainder if left >= 0 else -remainder
    return math.fmod(left, right)


def _operands(left: Any, right: Any) -> tuple[int | float, int | float] | None:
    """Both operands as numbers (None if either is NULL); a zero divisor is 22012."""
    if left is None or right is None:
        return None
    divisor = _number(right)
    if divisor == 0:
        raise SqlError("division by zero", "22012")
    return _number(left), divisor


def _number(value: Any) -> int | float:
    """A value in arithmetic, as SQLite reads text (a number prefix, else 0)."""
    if isinstance(value, (int, float)):
        return value
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise SqlError(f'invalid input syntax for type numeric: "{text}"', "22P02") from None


def _like(text: str | None, pattern: str | None) -> int | None:
    """PostgreSQL's LIKE: case-sensitive, % and _ wildcards, backslash escapes."""
    if text is None or pattern is None:
        return None
    return 1 if _compiled_like(str(pattern)).fullmatch(str(text)) is not None else 0


@functools.lru_cache(maxsize=256)
def _compiled_like(pattern: str) -> re.Pattern[str]:
    parts = []
    characters = iter(pattern)
    for character in characters:
        if character == "\\":
            parts.append(re.escape(next(characters, "\\")))
        elif character == "%":
            parts.append(".*")
        elif character == "_":
            parts.append(".")
        else:
            parts.append(re.escape(character))
    return re.compile("".join(parts), re.DOTALL)


_regex_lock = threading.Lock()
_regex_cache: dict[tuple[str, int], re.Pattern[str]] = {}


def _regex_match(text: str | None, pattern: str | None, flags: int) -> int | None:
    if text is None or pattern is None:
        return None
    return 1 if _compiled(pattern, flags).search(str(text)) is not None else 0


def _compiled(pattern: str, flags: int) -> re.Pattern[str]:
    with _regex_lock:
        found = _regex_cache.get((pattern, flags))
    if found is not None:
        return found
    try:
        found = re.compile(_python_regex(pattern), flags)
    except re.error as error:
        raise SqlError(f"invalid regular expression: {error}", "2201B") from error
    with _regex_lock:
        if len(_regex_cache) >= REGEX_CACHE_MAX:
            _regex_cache.clear()
        _regex_cache[(pattern, flags)] = found
    return found


_CLASSES = {
    "[:alpha:]": "a-zA-Z", "[:digit:]": "0-9", "[:alnum:]": "a-zA-Z0-9", "[:upper:]": "A-Z",
    "[:lower:]": "a-z", "[:space:]": r"\s", "[:punct:]": r"!-/:-@\[-`{-~", "[:xdigit:]": "0-9A-Fa-f",
    "[:word:]": r"\w",
}  # fmt: skip


def _python_regex(pattern: str) -> str:
    """PostgreSQL (ARE) regex syntax to Python's: POSIX classes, \\m \\M \\y word
    boundaries; the rest is the same for what clients send."""
    for name, replacement in _CLASSES.items():
        pattern = pattern.replace(name, replacement)
    return pattern.replace(r"\m", r"\b").replace(r"\M", r"\b").replace(r"\y", r"\b")


# Aggregates. apsw calls a factory per group: (context, step, final).


def _array_agg() -> tuple[list[Any], Callable[..., None], Callable[..., str | None]]:
    """array_agg(value): PostgreSQL's text form of the array of the group's values,
    NULL for no rows (as PostgreSQL)."""
    elements: list[Any] = []

    def step(context: list[Any], value: Any) -> None:
        if len(context) >= ARRAY_AGG_ELEMENTS_MAX:
            raise SqlError("array_agg: too many elements", "54000")
        context.append(value)

    def final(context: list[Any]) -> str | None:
        return array_text(context) if context else None

    return elements, step, final


def array_text(elements: list[Any]) -> str:
    """The text form of a one-dimensional PostgreSQL array: elements that are empty,
    NULL-like or hold a delimiter, brace, quote, backslash or space are quoted."""
    return "{" + ",".join(_array_element_text(each) for each in elements) + "}"


_ARRAY_QUOTE_NEEDED = re.compile(r'[{}",\\\s]')


def _array_element_text(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value.hex() if isinstance(value, bytes) else str(value)
    if text == "" or text.upper() == "NULL" or _ARRAY_QUOTE_NEEDED.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _bool_aggregate(
    combine: Callable[[bool, bool], bool],
) -> Callable[[], tuple[list[bool], Callable[..., None], Callable[..., int | None]]]:
    """bool_and / bool_or: NULL inputs are skipped; no non-NULL input gives NULL."""

    def factory() -> tuple[list[bool], Callable[..., None], Callable[..., int | None]]:
        def step(context: list[bool], value: Any) -> None:
            if value is None:
                return
            context[:] = [combine(context[0], bool(value))] if context else [bool(value)]

        def final(context: list[bool]) -> int | None:
            return (1 if context[0] else 0) if context else None

        return [], step, final

    return factory


_AGGREGATES: dict[str, Callable[[], tuple[Any, Callable[..., None], Callable[..., Any]]]] = {
    "array_agg": _array_agg,
    "bool_and": _bool_aggregate(lambda left, right: left and right),
    "bool_or": _bool_aggregate(lambda left, right: left or right),
}
