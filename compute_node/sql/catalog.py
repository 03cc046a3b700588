"""PostgreSQL 15 catalog rows computed from a description of an SQLite schema.

Pure Python: compute_node/engine/functions.py reads the schema of a connection
(sqlite_schema and the table/index/foreign key pragmas) into a `Schema`, and this
module turns it into the rows of pg_class, pg_attribute, pg_index, ... with the
columns, in the order, that PostgreSQL 15 has. Booleans are 1/0, OID columns are
integers, arrays (indkey, conkey, ...) are PostgreSQL's text forms ('1 2', '{1,2}').

Rules where SQLite and PostgreSQL differ (documented choices):
- OIDs of user objects are stable: a hash of the object's kind and name mapped to
  [16384, 2**31), so a table has the same OID on every connection and after a
  restart. A collision (rare) takes the next free OID in name order, which only
  moves the OID of the later name.
- Primary key: SQLite's own primary key, or a unique index named `<table>_pkey`
  (what ALTER TABLE ADD PRIMARY KEY becomes), is the primary key. Its index reads
  as `<table>_pkey` and its columns as NOT NULL.
- UNIQUE in a table definition (SQLite's autoindex of origin 'u') reads as a
  constraint; a CREATE UNIQUE INDEX is only an index, as in PostgreSQL.
- Constraint names: SQLite keeps none in its pragmas, but the translator writes
  every primary key, UNIQUE and REFERENCES as `CONSTRAINT "name" ...` into the
  table's SQL (compute_node/sql/ddl.py), so the names are read from there; a
  constraint without one reads as PostgreSQL's default (`<table>_pkey`,
  `<table>_<columns>_key`, `<table>_<columns>_fkey`).
- Triggers: PostgreSQL implements a foreign key with triggers on both tables, so a
  table that has or is referenced by a foreign key has relhastriggers (psql shows
  its foreign key footers only then); pg_trigger itself stays empty.
- Serial columns: an INTEGER PRIMARY KEY column of a table created with
  AUTOINCREMENT (what the translator emits for SERIAL/BIGSERIAL) reads with the
  default `nextval('<table>_<column>_seq'::regclass)` and has a sequence in
  pg_class. A plain INTEGER PRIMARY KEY has no default, as in PostgreSQL.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from borealis.pgwire.types import TYPES, PgType
from compute_node.sql.types import pg_type_of_declared, type_modifier_of

Row = tuple[Any, ...]

NAMESPACE_CATALOG_OID = 11
NAMESPACE_PUBLIC_OID = 2200
NAMESPACE_INFORMATION_SCHEMA_OID = 13207
NAMESPACE_TOAST_OID = 99
ROLE_SUPERUSER_OID = 10
DATABASE_OID = 5
AM_HEAP_OID = 2
AM_BTREE_OID = 403
OPCLASS_INT4_OID = 1978
OID_USER_MIN = 16384
OID_USER_RANGE = 2**31 - OID_USER_MIN
ENCODING_UTF8 = 6
SERVER_VERSION = "15.8"
SERVER_VERSION_NUM = 150008

# The names of internal tables that no client may see.
_HIDDEN_PREFIXES = ("sqlite_", "_borealis")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    declared_type: str
    not_null: bool
    default_sql: str | None
    """The default as SQLite keeps it (pragma table_xinfo dflt_value)."""
    primary_key_position: int
    """1-based position in SQLite's primary key, 0 when not part of it."""


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    unique: bool
    origin: str
    """SQLite's origin: 'c' CREATE INDEX, 'u' UNIQUE constraint, 'pk' PRIMARY KEY."""
    columns: tuple[str | None, ...]
    """Key columns in order; None for an expression."""
    partial: bool
    sql: str | None
    descending: tuple[bool, ...] = ()
    """Per key column: DESC (pragma index_xinfo); empty when all ascending."""


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    referenced_table: str
    referenced_columns: tuple[str | None, ...]
    """None when the reference names no columns (the referenced primary key)."""
    on_update: str
    on_delete: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    kind: str
    """'r' table or 'v' view."""
    sql: str
    columns: tuple[Column, ...] = ()
    indexes: tuple[Index, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Schema:
    tables: tuple[Table, ...]


def is_hidden(name: str) -> bool:
    return name.lower().startswith(_HIDDEN_PREFIXES)


def stable_oid(kind: str, name: str) -> int:
    """The preferred OID of a user object: the same on every connection and run."""
    digest = hashlib.blake2b(f"{kind}:{name}".encode(), digest_size=8).digest()
    return OID_USER_MIN + int.from_bytes(digest, "big") % OID_USER_RANGE


def _assign_oids(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Stable OIDs for (kind, name) keys; a collision moves the later key in sorted
    order to the next free OID."""
    taken: set[int] = set()
    assigned: dict[tuple[str, str], int] = {}
    for key in sorted(set(keys)):
        oid = stable_oid(*key)
        while oid in taken:
            oid = OID_USER_MIN + (oid - OID_USER_MIN + 1) % OID_USER_RANGE
        taken.add(oid)
        assigned[key] = oid
    return assigned


# format_type's names of the canonical type names, without a modifier.
_FORMAT_NAMES = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "bool": "boolean",
    "float4": "real",
    "float8": "double precision",
    "varchar": "character varying",
    "bpchar": "character",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
    "char": '"char"',
}
_TYPES_BY_OID = {each.oid: each for each in TYPES}
_ELEMENT_BY_ARRAY_OID = {each.array_oid: each for each in TYPES if each.array_oid}
_OID_BY_NAME = {each.name: each.oid for each in TYPES}


def format_type(type_oid: int | None, typmod: int | None) -> str | None:
    """PostgreSQL's format_type(oid, typmod)."""
    if type_oid is None:
        return None
    element = _ELEMENT_BY_ARRAY_OID.get(type_oid)
    if element is not None:
        return f"{format_type(element.oid, typmod)}[]"
    found = _TYPES_BY_OID.get(type_oid)
    if found is None:
        return "???"
    name = _FORMAT_NAMES.get(found.name, found.name)
    modifier = -1 if typmod is None else typmod
    if found.name in ("varchar", "bpchar") and modifier >= 4:
        return f"{name}({modifier - 4})"
    if found.name == "bpchar" and modifier < 0:
        return "bpchar"
    if found.name == "numeric" and modifier >= 4:
        return f"numeric({(modifier - 4) >> 16},{(modifier - 4) & 0xFFFF})"
    return name


def type_oid_of_declared(declared: str | None) -> int:
    return _OID_BY_NAME.get(pg_type_of_declared(declared), _OID_BY_NAME["text"])


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_ident for the common case: lower-case identifiers that are
    not keywords stay bare."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_RESERVED_WORDS = (
    "all analyse analyze and any array as asc asymmetric both case cast check collate column "
    "constraint create current_catalog current_date current_role current_time "
    "current_timestamp current_user default deferrable desc distinct do else end except "
    "false fetch for foreign from grant group having in initially intersect into lateral "
    "leading limit localtime localtimestamp not null offset on only or order placing primary "
    "references returning select session_user some symmetric table then to trailing true "
    "union unique user using variadic when where window with"  # noqa: SIM905
)
_RESERVED = frozenset(_RESERVED_WORDS.split())


@dataclass(frozen=True, slots=True)
class _Key:
    """A primary key, unique constraint or index of a table, as PostgreSQL names it."""

    name: str
    table: Table
    columns: tuple[str | None, ...]
    unique: bool
    primary: bool
    constraint: str | None
    """'p' or 'u' when the index backs a constraint, else None."""
    partial: bool
    sql: str | None
    descending: tuple[bool, ...] = ()

    @property
    def predicate(self) -> str | None:
        """The WHERE of a partial index as written (see `index_predicate`)."""
        return index_predicate(self.sql) if self.partial and self.sql else None


@dataclass(slots=True)
class Catalog:
    """The catalog rows of one schema version. Build with `Catalog.of(schema)`."""

    schema: Schema
    user: str = "postgres"
    database: str = "postgres"
    tables: tuple[Table, ...] = ()
    keys: dict[str, tuple[_Key, ...]] = field(default_factory=dict)
    oids: dict[tuple[str, str], int] = field(default_factory=dict)
    names_by_oid: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, schema: Schema) -> Catalog:
        tables = tuple(each for each in schema.tables if not is_hidden(each.name))
        catalog = cls(schema=schema, tables=tables)
        catalog.keys = {each.name: _keys_of(each) for each in tables}
        wanted: list[tuple[str, str]] = []
        for table in tables:
            wanted.append(("class", table.name))
            wanted.extend(("class", key.name) for key in catalog.keys[table.name])
            wanted.extend(("class", sequence) for _, sequence in _serials(table))
            wanted.extend(("constraint", name) for name, *_ in catalog.constraints_of(table))
            wanted.extend(("attrdef", f"{table.name}.{c.name}") for c in table.columns)
        catalog.oids = _assign_oids(wanted)
        catalog.names_by_oid = {oid: key for key, oid in catalog.oids.items()}
        return catalog

    # Lookups used by the SQL functions.

    def class_oid(self, name: str) -> int | None:
        return self.oids.get(("class", name))

    def class_name(self, oid: int) -> str | None:
        key = self.names_by_oid.get(oid)
        return key[1] if key is not None and key[0] == "class" else None

    def table(self, name: str) -> Table | None:
        for each in self.tables:
            if each.name == name:
                return each
        return None

    def key_by_oid(self, oid: int) -> _Key | None:
        name = self.class_name(oid)
        for keys in self.keys.values():
            for key in keys:
                if key.name == name:
                    return key
        return None

    def constraints_of(self, table: Table) -> list[tuple[str, str, tuple[str | None, ...], Any]]:
        """(name, contype, columns, detail) of a table: 'p'/'u' with their _Key,
        'f' with its ForeignKey."""
        found: list[tuple[str, str, tuple[str | None, ...], Any]] = []
        for key in self.keys.get(table.name, ()):
            if key.constraint is not None:
                found.append((key.name, key.constraint, key.columns, key))
        named = constraint_names(table.sql)
        for foreign in table.foreign_keys:
            default = f"{table.name}_{'_'.join(foreign.columns)}_fkey"
            name = named.get(("f", _folded(foreign.columns)), default)
            found.append((name, "f", foreign.columns, foreign))
        return found

    def constraint_by_oid(self, oid: int) -> tuple[Table, str, str, Any] | None:
        key = self.names_by_oid.get(oid)
        if key is None or key[0] != "constraint":
            return None
        for table in self.tables:
            for name, contype, _, detail in self.constraints_of(table):
                if name == key[1]:
                    return table, name, contype, detail
        return None

    def attnum(self, table: Table, column: str | None) -> int:
        for number, each in enumerate(table.columns, start=1):
            if column is not None and each.name.lower() == column.lower():
                return number
        return 0

    def column_default(self, table: Table, column: Column) -> str | None:
        """The default as pg_get_expr shows it."""
        for name, sequence in _serials(table):
            if name == column.name:
                return f"nextval('{sequence}'::regclass)"
        if column.default_sql is None:
            return None
        return _default_expression(column)

    def foreign_key_tables(self) -> frozenset[str]:
        """The tables that have or are referenced by a foreign key (PostgreSQL puts
        the triggers that check it on both)."""
        return frozenset(
            name
            for table in self.tables
            if table.foreign_keys
            for name in (table.name, *(each.referenced_table for each in table.foreign_keys))
        )

    def primary_key_columns(self, table_name: str) -> tuple[str | None, ...]:
        for key in self.keys.get(table_name, ()):
            if key.primary:
                return key.columns
        return ()

    def serial_sequence(self, table_name: str, column: str) -> str | None:
        table = self.table(table_name)
        if table is None:
            return None
        for name, sequence in _serials(table):
            if name.lower() == column.lower():
                return f"public.{sequence}"
        return None

    # Definitions (pg_get_indexdef, pg_get_constraintdef).

    def index_definition(self, key: _Key, column: int, qualified: bool) -> str:
        if column > 0:
            if column > len(key.columns):
                return ""
            return quote_ident(key.columns[column - 1] or "expression")
        table = (
            f"public.{quote_ident(key.table.name)}" if qualified else quote_ident(key.table.name)
        )
        columns = ", ".join(
            quote_ident(each or "expression") + (" DESC" if _descending(key, number) else "")
            for number, each in enumerate(key.columns)
        )
        unique = "UNIQUE " if key.unique else ""
        text = f"CREATE {unique}INDEX {quote_ident(key.name)} ON {table} USING btree ({columns})"
        predicate = key.predicate
        if predicate is not None:
            # PostgreSQL deparses the predicate; the text as written stands in for it,
            # in parentheses unless pretty (as pg_get_indexdef(oid, 0, true) prints).
            text += f" WHERE {predicate}" if not qualified else f" WHERE ({predicate})"
        return text

    def constraint_definition(self, contype: str, detail: Any) -> str:
        if contype in ("p", "u"):
            columns = ", ".join(quote_ident(each or "expression") for each in detail.columns)
            return f"{'PRIMARY KEY' if contype == 'p' else 'UNIQUE'} ({columns})"
        foreign: ForeignKey = detail
        referenced = self._referenced_columns(foreign)
        text = (
            f"FOREIGN KEY ({', '.join(quote_ident(c) for c in foreign.columns)}) "
            f"REFERENCES {quote_ident(foreign.referenced_table)}"
            f"({', '.join(quote_ident(c or '') for c in referenced)})"
        )
        for event, action in (("UPDATE", foreign.on_update), ("DELETE", foreign.on_delete)):
            if action.upper() not in ("NO ACTION", ""):
                text += f" ON {event} {action.upper()}"
        return text

    def _referenced_columns(self, foreign: ForeignKey) -> tuple[str | None, ...]:
        if all(each is not None for each in foreign.referenced_columns):
            return foreign.referenced_columns
        return self.primary_key_columns(foreign.referenced_table)

    # Catalog rows.

    def rows(self, table_name: str) -> list[Row]:
        producer = _PRODUCERS.get(table_name)
        assert producer is not None, table_name
        return producer(self)


def _serials(table: Table) -> list[tuple[str, str]]:
    """(column, sequence name) of the serial column of a table, by the AUTOINCREMENT rule."""
    if table.kind != "r" or not re.search(r"\bAUTOINCREMENT\b", table.sql, re.IGNORECASE):
        return []
    return [
        (each.name, f"{table.name}_{each.name}_seq")
        for each in table.columns
        if each.primary_key_position and each.declared_type.upper() == "INTEGER"
    ]


def _keys_of(table: Table) -> tuple[_Key, ...]:
    keys: list[_Key] = []
    primary = tuple(
        each.name
        for each in sorted(table.columns, key=lambda c: c.primary_key_position)
        if each.primary_key_position
    )
    named = constraint_names(table.sql)
    has_pkey_index = any(each.name == f"{table.name}_pkey" for each in table.indexes)
    if primary and not has_pkey_index:
        name = named.get(("p", _folded(primary)), f"{table.name}_pkey")
        keys.append(_Key(name, table, primary, True, True, "p", False, None))
    for index in table.indexes:
        if index.origin == "pk":
            continue
        if index.name == f"{table.name}_pkey":
            keys.append(_Key(index.name, table, index.columns, True, True, "p", False, index.sql))
        elif index.origin == "u":
            default = f"{table.name}_{'_'.join(c or 'expr' for c in index.columns)}_key"
            name = named.get(("u", _folded(index.columns)), default)
            keys.append(_Key(name, table, index.columns, True, False, "u", False, None))
        else:
            keys.append(
                _Key(
                    index.name,
                    table,
                    index.columns,
                    index.unique,
                    False,
                    None,
                    index.partial,
                    index.sql,
                    index.descending,
                )
            )
    return tuple(keys)


INDOPTION_DESC_NULLS_FIRST = 3
"""pg_index.indoption of a DESC column: INDOPTION_DESC | INDOPTION_NULLS_FIRST."""
_INDEX_PREDICATE = re.compile(r"^\s*CREATE\s.*?\)\s*WHERE\s+(.*?)\s*;?\s*$", re.I | re.S)


def index_predicate(sql: str) -> str | None:
    """The WHERE of a CREATE INDEX text: what follows the first ')' that WHERE follows
    (the end of the column list: expressions in it close no parenthesis before WHERE)."""
    found = _INDEX_PREDICATE.match(sql)
    return found[1] if found else None


def _descending(key: _Key, number: int) -> bool:
    return number < len(key.descending) and key.descending[number]


def _index_option(key: _Key, number: int) -> str:
    return str(INDOPTION_DESC_NULLS_FIRST) if _descending(key, number) else "0"


def _predicate_expression(key: _Key) -> str | None:
    """pg_index.indpred as pg_get_expr shows it: the predicate in parentheses."""
    predicate = key.predicate
    if predicate is None:
        return None
    return predicate if _wrapped_in_parentheses(predicate) else f"({predicate})"


_IDENTIFIER = r'"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|[A-Za-z_][\w$]*'
_TABLE_CONSTRAINT = re.compile(
    rf"\s*CONSTRAINT\s+({_IDENTIFIER})\s+(PRIMARY\s+KEY|UNIQUE|FOREIGN\s+KEY)\s*\(([^)]*)\)",
    re.IGNORECASE,
)
_COLUMN_CONSTRAINT = re.compile(
    rf"\bCONSTRAINT\s+({_IDENTIFIER})\s+(PRIMARY\s+KEY|UNIQUE|REFERENCES)\b", re.IGNORECASE
)
_CONSTRAINT_KINDS = {"PRIMARY": "p", "UNIQUE": "u", "FOREIGN": "f", "REFERENCES": "f"}


@functools.lru_cache(maxsize=1024)
def constraint_names(sql: str) -> dict[tuple[str, tuple[str, ...]], str]:
    """The names that a CREATE TABLE gives its constraints: (contype 'p'/'u'/'f',
    lower-case columns) -> name. Unnamed constraints are absent."""
    found: dict[tuple[str, tuple[str, ...]], str] = {}
    for part in _table_body_items(sql):
        table_constraint = _TABLE_CONSTRAINT.match(part)
        if table_constraint is not None:
            name, kind, listed = table_constraint.groups()
            columns = tuple(_unquoted(each.strip()) for each in listed.split(","))
            key = (_CONSTRAINT_KINDS[kind.split()[0].upper()], _folded(columns))
            found.setdefault(key, _unquoted(name))
            continue
        column = re.match(rf"\s*({_IDENTIFIER})", part)
        if column is None or column[1].upper() in ("CHECK", "PRIMARY", "UNIQUE", "FOREIGN"):
            continue
        for name, kind in _COLUMN_CONSTRAINT.findall(part[column.end() :]):
            key = (_CONSTRAINT_KINDS[kind.split()[0].upper()], _folded((_unquoted(column[1]),)))
            found.setdefault(key, _unquoted(name))
    return found


def _table_body_items(sql: str) -> list[str]:
    """The comma-separated items between the outer parentheses of a CREATE TABLE,
    with quotes and nested parentheses respected."""
    items: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for character in sql:
        if quote is not None:
            quote = None if character == quote else quote
        elif character in "'\"`":
            quote = character
        elif character == "(":
            depth += 1
            if depth == 1:
                continue
        elif character == ")":
            depth -= 1
            if depth == 0:
                break
        elif character == "," and depth == 1:
            items.append("".join(current))
            current = []
            continue
        if depth >= 1:
            current.append(character)
    items.append("".join(current))
    return [each for each in items if each.strip()]


def _unquoted(identifier: str) -> str:
    if identifier[:1] == '"' and identifier[-1:] == '"':
        return identifier[1:-1].replace('""', '"')
    if identifier[:1] in ("`", "[") and len(identifier) >= 2:
        return identifier[1:-1]
    return identifier


def _folded(columns: tuple[str | None, ...]) -> tuple[str, ...]:
    return tuple((each or "").lower() for each in columns)


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _default_expression(column: Column) -> str:
    """A default as PostgreSQL shows it: string literals carry their type cast."""
    text = (column.default_sql or "").strip()
    while _wrapped_in_parentheses(text):
        text = text[1:-1].strip()
    upper = text.upper()
    # The translator writes now() in a DEFAULT as SQLite's clock (compute_node/sql/rewrite.py).
    if upper in ("CURRENT_TIMESTAMP", "NOW()") or upper.startswith("STRFTIME('%Y-%M-%D %H:%M:%F"):
        return "now()"
    if upper in ("TRUE", "FALSE"):
        return upper.lower()
    if _NUMBER.fullmatch(text):
        return text if not text.startswith("-") else f"'{text}'::{_cast_name(column)}"
    if text.startswith("'") and text.endswith("'"):
        return f"{text}::{_cast_name(column)}"
    return text


def _wrapped_in_parentheses(text: str) -> bool:
    """Whether the first '(' closes at the last character (quotes ignored: defaults
    written by the translator put no parentheses in strings at the edges)."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for index, character in enumerate(text):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth == 0:
            return index == len(text) - 1
    return False


def _cast_name(column: Column) -> str:
    name = format_type(type_oid_of_declared(column.declared_type), -1) or "text"
    return "bpchar" if name == "bpchar" else name


def _bool(value: bool) -> int:
    return 1 if value else 0


def _relation_rows(catalog: Catalog) -> Iterable[tuple[int, str, str, Table | None, _Key | None]]:
    """(oid, name, relkind, table, key) of every user relation."""
    for table in catalog.tables:
        assert (oid := catalog.class_oid(table.name)) is not None
        yield oid, table.name, table.kind, table, None
        for key in catalog.keys[table.name]:
            yield catalog.oids[("class", key.name)], key.name, "i", table, key
        for _, sequence in _serials(table):
            yield catalog.oids[("class", sequence)], sequence, "S", None, None


def _pg_class(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    triggered = catalog.foreign_key_tables()
    for oid, name, kind, table, key in _relation_rows(catalog):
        if kind == "i":
            assert key is not None
            natts = len(key.columns)
        elif kind == "S":
            natts = 3
        else:
            assert table is not None
            natts = len(table.columns)
        has_index = kind == "r" and table is not None and bool(catalog.keys[table.name])
        has_triggers = kind == "r" and name in triggered
        checks = 0
        am = AM_HEAP_OID if kind == "r" else AM_BTREE_OID if kind == "i" else 0
        rows.append(
            (oid, name, NAMESPACE_PUBLIC_OID, 0, 0, ROLE_SUPERUSER_OID, am, oid, 0, 0, -1.0, 0,
             0, _bool(has_index), 0, "p", kind, natts, checks, 0, _bool(has_triggers), 0, 0, 0, 1,
             "d", 0, 0, "0", "1", None, None, None)
        )  # fmt: skip
    return rows


PG_CLASS_COLUMNS = (
    "oid oid", "relname name", "relnamespace oid", "reltype oid", "reloftype oid",
    "relowner oid", "relam oid", "relfilenode oid", "reltablespace oid", "relpages int4",
    "reltuples float4", "relallvisible int4", "reltoastrelid oid", "relhasindex bool",
    "relisshared bool", "relpersistence char", "relkind char", "relnatts int2",
    "relchecks int2", "relhasrules bool", "relhastriggers bool", "relhassubclass bool",
    "relrowsecurity bool", "relforcerowsecurity bool", "relispopulated bool",
    "relreplident char", "relispartition bool", "relrewrite oid", "relfrozenxid text",
    "relminmxid text", "relacl text", "reloptions text", "relpartbound text",
)  # fmt: skip


def _pg_namespace(catalog: Catalog) -> list[Row]:
    return [
        (NAMESPACE_TOAST_OID, "pg_toast", ROLE_SUPERUSER_OID, None),
        (NAMESPACE_CATALOG_OID, "pg_catalog", ROLE_SUPERUSER_OID, None),
        (NAMESPACE_PUBLIC_OID, "public", ROLE_SUPERUSER_OID, None),
        (NAMESPACE_INFORMATION_SCHEMA_OID, "information_schema", ROLE_SUPERUSER_OID, None),
    ]


PG_NAMESPACE_COLUMNS = ("oid oid", "nspname name", "nspowner oid", "nspacl text")


def _pg_attribute(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        oid = catalog.class_oid(table.name)
        primary = set(catalog.primary_key_columns(table.name))
        for number, column in enumerate(table.columns, start=1):
            type_oid = type_oid_of_declared(column.declared_type)
            found = _TYPES_BY_OID[type_oid]
            collation = 100 if found.category == "S" and found.name != "name" else 0
            has_default = catalog.column_default(table, column) is not None
            rows.append(
                (oid, column.name, type_oid, -1, found.length, number, 0, -1,
                 type_modifier_of(column.declared_type), _bool(found.length in (1, 2, 4, 8)),
                 _align(found), "p" if found.length > 0 else "x", "",
                 _bool(column.not_null or column.name in primary), _bool(has_default), 0, "", "",
                 0, 1, 0, collation, None, None, None, None)
            )  # fmt: skip
    return rows


def _align(found: PgType) -> str:
    return {1: "c", 2: "s", 4: "i", 8: "d"}.get(found.length, "i")


PG_ATTRIBUTE_COLUMNS = (
    "attrelid oid", "attname name", "atttypid oid", "attstattarget int4", "attlen int2",
    "attnum int2", "attndims int4", "attcacheoff int4", "atttypmod int4", "attbyval bool",
    "attalign char", "attstorage char", "attcompression char", "attnotnull bool",
    "atthasdef bool",
    "atthasmissing bool", "attidentity char", "attgenerated char", "attisdropped bool",
    "attislocal bool", "attinhcount int4", "attcollation oid", "attacl text",
    "attoptions text", "attfdwoptions text", "attmissingval text",
)  # fmt: skip


def _pg_attrdef(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        for number, column in enumerate(table.columns, start=1):
            expression = catalog.column_default(table, column)
            if expression is not None:
                oid = catalog.oids[("attrdef", f"{table.name}.{column.name}")]
                rows.append((oid, catalog.class_oid(table.name), number, expression))
    return rows


PG_ATTRDEF_COLUMNS = ("oid oid", "adrelid oid", "adnum int2", "adbin text")


def _pg_index(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        table_oid = catalog.class_oid(table.name)
        for key in catalog.keys[table.name]:
            attnums = [catalog.attnum(table, each) for each in key.columns]
            count = len(attnums)
            rows.append(
                (catalog.oids[("class", key.name)], table_oid, count, count, _bool(key.unique), 0,
                 _bool(key.primary), 0, 1, 0, 1, 0, 1, 1, 0, " ".join(map(str, attnums)),
                 " ".join("0" for _ in attnums), " ".join(str(OPCLASS_INT4_OID) for _ in attnums),
                 " ".join(_index_option(key, n) for n in range(count)), None, _predicate_expression(key))
            )  # fmt: skip
    return rows


PG_INDEX_COLUMNS = (
    "indexrelid oid", "indrelid oid", "indnatts int2", "indnkeyatts int2", "indisunique bool",
    "indnullsnotdistinct bool", "indisprimary bool", "indisexclusion bool", "indimmediate bool",
    "indisclustered bool", "indisvalid bool", "indcheckxmin bool", "indisready bool",
    "indislive bool", "indisreplident bool", "indkey text", "indcollation text",
    "indclass text", "indoption text", "indexprs text", "indpred text",
)  # fmt: skip


def _pg_constraint(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        table_oid = catalog.class_oid(table.name)
        for name, contype, columns, detail in catalog.constraints_of(table):
            conkey = "{" + ",".join(str(catalog.attnum(table, c)) for c in columns) + "}"
            if contype == "f":
                rows.append(_foreign_row(catalog, table, name, conkey, detail))
                continue
            index_oid = catalog.oids[("class", name)]
            rows.append(
                (catalog.oids[("constraint", name)], name, NAMESPACE_PUBLIC_OID, contype, 0, 0, 1,
                 table_oid, 0, index_oid, 0, 0, " ", " ", " ", 1, 0, 1, conkey, None, None,
                 None, None, None, None, None)
            )  # fmt: skip
    return rows


def _foreign_row(
    catalog: Catalog, table: Table, name: str, conkey: str, foreign: ForeignKey
) -> Row:
    referenced = catalog.table(foreign.referenced_table)
    referenced_oid = catalog.class_oid(foreign.referenced_table) or 0
    columns = catalog._referenced_columns(foreign)
    confkey = None
    index_oid = 0
    if referenced is not None:
        confkey = "{" + ",".join(str(catalog.attnum(referenced, c)) for c in columns) + "}"
        for key in catalog.keys[referenced.name]:
            if key.unique and tuple(key.columns) == tuple(columns):
                index_oid = catalog.oids[("class", key.name)]
                break
    return (
        catalog.oids[("constraint", name)], name, NAMESPACE_PUBLIC_OID, "f", 0, 0, 1,
        catalog.class_oid(table.name), 0, index_oid, 0, referenced_oid,
        _action_code(foreign.on_update), _action_code(foreign.on_delete), "s", 1, 0, 1, conkey,
        confkey, None, None, None, None, None, None,
    )  # fmt: skip


def _action_code(action: str) -> str:
    return {"CASCADE": "c", "SET NULL": "n", "SET DEFAULT": "d", "RESTRICT": "r"}.get(
        action.upper(), "a"
    )


PG_CONSTRAINT_COLUMNS = (
    "oid oid", "conname name", "connamespace oid", "contype char", "condeferrable bool",
    "condeferred bool", "convalidated bool", "conrelid oid", "contypid oid", "conindid oid",
    "conparentid oid", "confrelid oid", "confupdtype char", "confdeltype char",
    "confmatchtype char", "conislocal bool", "coninhcount int4", "connoinherit bool",
    "conkey text", "confkey text", "conpfeqop text", "conppeqop text", "conffeqop text",
    "confdelsetcols text", "conexclop text", "conbin text",
)  # fmt: skip


def _pg_type(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for each in TYPES:
        rows.append(
            _type_row(
                each.oid, each.name, each.length, "b", each.category, 0, each.array_oid, each.name
            )
        )
        if each.array_oid:
            rows.append(
                _type_row(each.array_oid, f"_{each.name}", -1, "b", "A", each.oid, 0, "array")
            )
    return rows


def _type_row(oid: int, name: str, length: int, kind: str, category: str, element: int,
              array: int, io: str) -> Row:  # fmt: skip
    collation = 100 if category == "S" and name != "name" else 950 if name == "name" else 0
    align = {1: "c", 2: "s", 4: "i", 8: "d"}.get(length, "i")
    return (
        oid, name, NAMESPACE_CATALOG_OID, ROLE_SUPERUSER_OID, length, _bool(length in (1, 2, 4, 8)),
        kind, category, 0, 1, ",", 0, "-" if not element else "array_subscript_handler", element,
        array, f"{io}_in", f"{io}_out", f"{io}_recv", f"{io}_send", "-", "-", "-", align,
        "p" if length > 0 else "x", 0, 0, -1, 1 if element else 0, collation, None, None, None,
    )  # fmt: skip


PG_TYPE_COLUMNS = (
    "oid oid", "typname name", "typnamespace oid", "typowner oid", "typlen int2",
    "typbyval bool", "typtype char", "typcategory char", "typispreferred bool",
    "typisdefined bool", "typdelim char", "typrelid oid", "typsubscript text", "typelem oid",
    "typarray oid", "typinput text", "typoutput text", "typreceive text", "typsend text",
    "typmodin text", "typmodout text", "typanalyze text", "typalign char", "typstorage char",
    "typnotnull bool", "typbasetype oid", "typtypmod int4", "typndims int4",
    "typcollation oid", "typdefaultbin text", "typdefault text", "typacl text",
)  # fmt: skip


def _pg_am(catalog: Catalog) -> list[Row]:
    return [
        (AM_HEAP_OID, "heap", "heap_tableam_handler", "t"),
        (AM_BTREE_OID, "btree", "bthandler", "i"),
    ]


PG_AM_COLUMNS = ("oid oid", "amname name", "amhandler text", "amtype char")


def _pg_database(catalog: Catalog) -> list[Row]:
    return [
        (DATABASE_OID, catalog.database, ROLE_SUPERUSER_OID, ENCODING_UTF8, "c", 0, 1, -1,
         "0", "1", 1663, "C.UTF-8", "C.UTF-8", None, None, None)
    ]  # fmt: skip


PG_DATABASE_COLUMNS = (
    "oid oid", "datname name", "datdba oid", "encoding int4", "datlocprovider char",
    "datistemplate bool", "datallowconn bool", "datconnlimit int4", "datfrozenxid text",
    "datminmxid text", "dattablespace oid", "datcollate text", "datctype text",
    "daticulocale text", "datcollversion text", "datacl text",
)  # fmt: skip


def _pg_roles(catalog: Catalog) -> list[Row]:
    return [
        (catalog.user, 1, 1, 1, 1, 1, 1, -1, "********", None, 1, None, ROLE_SUPERUSER_OID)
    ]  # fmt: skip


PG_ROLES_COLUMNS = (
    "rolname name", "rolsuper bool", "rolinherit bool", "rolcreaterole bool",
    "rolcreatedb bool", "rolcanlogin bool", "rolreplication bool", "rolconnlimit int4",
    "rolpassword text", "rolvaliduntil timestamptz", "rolbypassrls bool", "rolconfig text",
    "oid oid",
)  # fmt: skip


def _pg_user(catalog: Catalog) -> list[Row]:
    return [(catalog.user, ROLE_SUPERUSER_OID, 1, 1, 1, 1, "********", None, None)]


PG_USER_COLUMNS = (
    "usename name", "usesysid oid", "usecreatedb bool", "usesuper bool", "userepl bool",
    "usebypassrls bool", "passwd text", "valuntil timestamptz", "useconfig text",
)  # fmt: skip


def _pg_tables(catalog: Catalog) -> list[Row]:
    triggered = catalog.foreign_key_tables()
    return [
        (
            "public",
            t.name,
            catalog.user,
            None,
            _bool(bool(catalog.keys[t.name])),
            0,
            _bool(t.name in triggered),
            0,
        )
        for t in catalog.tables
        if t.kind == "r"
    ]


PG_TABLES_COLUMNS = (
    "schemaname name", "tablename name", "tableowner name", "tablespace name",
    "hasindexes bool", "hasrules bool", "hastriggers bool", "rowsecurity bool",
)  # fmt: skip


def _pg_views(catalog: Catalog) -> list[Row]:
    return [
        ("public", t.name, catalog.user, _view_body(t.sql)) for t in catalog.tables if t.kind == "v"
    ]


def _view_body(sql: str) -> str:
    match = re.search(r"\bAS\b(.*)$", sql, re.IGNORECASE | re.DOTALL)
    return (match[1].strip() if match else sql) + ";"


PG_VIEWS_COLUMNS = ("schemaname name", "viewname name", "viewowner name", "definition text")


def _pg_indexes(catalog: Catalog) -> list[Row]:
    return [
        ("public", table.name, key.name, None, catalog.index_definition(key, 0, True))
        for table in catalog.tables
        for key in catalog.keys[table.name]
    ]


PG_INDEXES_COLUMNS = (
    "schemaname name", "tablename name", "indexname name", "tablespace name", "indexdef text",
)  # fmt: skip


def _pg_sequence(catalog: Catalog) -> list[Row]:
    return [
        (catalog.oids[("class", sequence)], 23, 1, 1, 2147483647, 1, 1, 0)
        for table in catalog.tables
        for _, sequence in _serials(table)
    ]


PG_SEQUENCE_COLUMNS = (
    "seqrelid oid", "seqtypid oid", "seqstart int8", "seqincrement int8", "seqmax int8",
    "seqmin int8", "seqcache int8", "seqcycle bool",
)  # fmt: skip


def _pg_settings(catalog: Catalog) -> list[Row]:
    return [
        (name, value, None, "Client Connection Defaults", "", None, "user", "string", "default",
         None, None, None, value, value, None, None, 0)
        for name, value in DEFAULT_SETTINGS.items()
    ]  # fmt: skip


PG_SETTINGS_COLUMNS = (
    "name text", "setting text", "unit text", "category text", "short_desc text",
    "extra_desc text", "context text", "vartype text", "source text", "min_val text",
    "max_val text", "enumvals text", "boot_val text", "reset_val text", "sourcefile text",
    "sourceline int4", "pending_restart bool",
)  # fmt: skip

DEFAULT_SETTINGS: dict[str, str] = {
    "server_version": SERVER_VERSION,
    "server_version_num": str(SERVER_VERSION_NUM),
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "search_path": '"$user", public',
    "transaction_isolation": "read committed",
    "default_transaction_isolation": "read committed",
    "default_transaction_read_only": "off",
    "transaction_read_only": "off",
    "max_identifier_length": "63",
    "lc_collate": "C.UTF-8",
    "lc_ctype": "C.UTF-8",
    "application_name": "",
    "is_superuser": "on",
    "statement_timeout": "0",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "max_connections": "100",
    "block_size": "4096",
}


def _pg_proc(catalog: Catalog) -> list[Row]:
    names = ("version", "current_schema", "format_type", "pg_get_expr", "now", "count")
    return [(2000 + number, name, NAMESPACE_CATALOG_OID, ROLE_SUPERUSER_OID, 12, "f", 25, "")
            for number, name in enumerate(names)]  # fmt: skip


PG_PROC_COLUMNS = (
    "oid oid", "proname name", "pronamespace oid", "proowner oid", "prolang oid",
    "prokind char", "prorettype oid", "proargtypes text",
)  # fmt: skip


def _pg_stat_activity(catalog: Catalog) -> list[Row]:
    # One row: this session's own (a connection cannot see other sessions).
    return [(DATABASE_OID, catalog.database, 0, None, ROLE_SUPERUSER_OID, catalog.user, "", None,
             None, None, None, None, None, None, "active", None, None, None, "client backend")]  # fmt: skip


PG_STAT_ACTIVITY_COLUMNS = (
    "datid oid", "datname name", "pid int4", "leader_pid int4", "usesysid oid",
    "usename name", "application_name text", "client_addr text", "client_hostname text",
    "client_port int4", "backend_start timestamptz", "xact_start timestamptz",
    "query_start timestamptz", "state_change timestamptz", "state text", "backend_xid text",
    "backend_xmin text", "query text", "backend_type text",
)  # fmt: skip


def _information_schema_tables(catalog: Catalog) -> list[Row]:
    return [
        (catalog.database, "public", t.name, "BASE TABLE" if t.kind == "r" else "VIEW", None,
         None, None, None, None, "YES", "NO", None)
        for t in catalog.tables
    ]  # fmt: skip


INFORMATION_SCHEMA_TABLES_COLUMNS = (
    "table_catalog name", "table_schema name", "table_name name", "table_type text",
    "self_referencing_column_name name", "reference_generation text",
    "user_defined_type_catalog name", "user_defined_type_schema name",
    "user_defined_type_name name", "is_insertable_into text", "is_typed text",
    "commit_action text",
)  # fmt: skip


def _information_schema_columns(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        primary = set(catalog.primary_key_columns(table.name))
        for number, column in enumerate(table.columns, start=1):
            rows.append(_information_column(catalog, table, number, column, primary))
    return rows


def _information_column(catalog: Catalog, table: Table, number: int, column: Column,
                        primary: set[str | None]) -> Row:  # fmt: skip
    type_oid = type_oid_of_declared(column.declared_type)
    name = _TYPES_BY_OID[type_oid].name
    typmod = type_modifier_of(column.declared_type)
    data_type = (format_type(type_oid, -1) or "text").replace("bpchar", "character")
    length = typmod - 4 if name in ("varchar", "bpchar") and typmod >= 4 else None
    precision = ((typmod - 4) >> 16) if name == "numeric" and typmod >= 4 else _precision(name)
    scale = (
        ((typmod - 4) & 0xFFFF)
        if name == "numeric" and typmod >= 4
        else (0 if name in ("int2", "int4", "int8") else None)
    )
    nullable = "NO" if column.not_null or column.name in primary else "YES"
    return (
        catalog.database, "public", table.name, column.name, number,
        catalog.column_default(table, column), nullable, data_type, length,
        length * 4 if length is not None else None, precision,
        2 if name in ("int2", "int4", "int8", "float4", "float8") else 10 if precision else None,
        scale, None, None, None, None, None, None, None, None, None, None, None, None,
        catalog.database,
        "pg_catalog", name, None, None, None, None, str(number), "NO", "NO", None, None, None,
        None, None, "NO", "NEVER", None, "YES",
    )  # fmt: skip


def _precision(name: str) -> int | None:
    return {"int2": 16, "int4": 32, "int8": 64, "float4": 24, "float8": 53}.get(name)


INFORMATION_SCHEMA_COLUMNS_COLUMNS = (
    "table_catalog name", "table_schema name", "table_name name", "column_name name",
    "ordinal_position int4", "column_default text", "is_nullable text", "data_type text",
    "character_maximum_length int4", "character_octet_length int4", "numeric_precision int4",
    "numeric_precision_radix int4", "numeric_scale int4", "datetime_precision int4",
    "interval_type text", "interval_precision int4", "character_set_catalog name",
    "character_set_schema name", "character_set_name name", "collation_catalog name",
    "collation_schema name", "collation_name name", "domain_catalog name",
    "domain_schema name", "domain_name name", "udt_catalog name", "udt_schema name",
    "udt_name name", "scope_catalog name", "scope_schema name", "scope_name name",
    "maximum_cardinality int4", "dtd_identifier name", "is_self_referencing text",
    "is_identity text", "identity_generation text", "identity_start text",
    "identity_increment text", "identity_maximum text", "identity_minimum text",
    "identity_cycle text", "is_generated text", "generation_expression text",
    "is_updatable text",
)  # fmt: skip


def _information_schema_schemata(catalog: Catalog) -> list[Row]:
    return [
        (catalog.database, name, catalog.user, None, None, None, None)
        for name in ("pg_catalog", "public", "information_schema")
    ]


INFORMATION_SCHEMA_SCHEMATA_COLUMNS = (
    "catalog_name name", "schema_name name", "schema_owner name",
    "default_character_set_catalog name", "default_character_set_schema name",
    "default_character_set_name name", "sql_path text",
)  # fmt: skip


def _information_schema_table_constraints(catalog: Catalog) -> list[Row]:
    kinds = {"p": "PRIMARY KEY", "u": "UNIQUE", "f": "FOREIGN KEY"}
    return [
        (catalog.database, "public", name, catalog.database, "public", table.name, kinds[contype],
         "NO", "NO", "YES")
        for table in catalog.tables
        for name, contype, _, _ in catalog.constraints_of(table)
    ]  # fmt: skip


INFORMATION_SCHEMA_TABLE_CONSTRAINTS_COLUMNS = (
    "constraint_catalog name", "constraint_schema name", "constraint_name name",
    "table_catalog name", "table_schema name", "table_name name", "constraint_type text",
    "is_deferrable text", "initially_deferred text", "enforced text",
)  # fmt: skip


def _information_schema_key_column_usage(catalog: Catalog) -> list[Row]:
    rows: list[Row] = []
    for table in catalog.tables:
        for name, contype, columns, _ in catalog.constraints_of(table):
            for position, column in enumerate(columns, start=1):
                rows.append(
                    (catalog.database, "public", name, catalog.database, "public", table.name,
                     column, position, position if contype == "f" else None)
                )  # fmt: skip
    return rows


INFORMATION_SCHEMA_KEY_COLUMN_USAGE_COLUMNS = (
    "constraint_catalog name", "constraint_schema name", "constraint_name name",
    "table_catalog name", "table_schema name", "table_name name", "column_name name",
    "ordinal_position int4", "position_in_unique_constraint int4",
)  # fmt: skip


def _empty(catalog: Catalog) -> list[Row]:
    return []


_PRODUCERS: dict[str, Callable[[Catalog], list[Row]]] = {}

# Every emulated table: name -> (column definitions "name type", rows).
# Empty tables have the columns clients read or join on.
TABLES: dict[str, tuple[tuple[str, ...], Callable[[Catalog], list[Row]]]] = {
    "pg_class": (PG_CLASS_COLUMNS, _pg_class),
    "pg_namespace": (PG_NAMESPACE_COLUMNS, _pg_namespace),
    "pg_attribute": (PG_ATTRIBUTE_COLUMNS, _pg_attribute),
    "pg_attrdef": (PG_ATTRDEF_COLUMNS, _pg_attrdef),
    "pg_type": (PG_TYPE_COLUMNS, _pg_type),
    "pg_index": (PG_INDEX_COLUMNS, _pg_index),
    "pg_constraint": (PG_CONSTRAINT_COLUMNS, _pg_constraint),
    "pg_am": (PG_AM_COLUMNS, _pg_am),
    "pg_database": (PG_DATABASE_COLUMNS, _pg_database),
    "pg_roles": (PG_ROLES_COLUMNS, _pg_roles),
    "pg_authid": (PG_ROLES_COLUMNS, _pg_roles),
    "pg_user": (PG_USER_COLUMNS, _pg_user),
    "pg_settings": (PG_SETTINGS_COLUMNS, _pg_settings),
    "pg_proc": (PG_PROC_COLUMNS, _pg_proc),
    "pg_tables": (PG_TABLES_COLUMNS, _pg_tables),
    "pg_views": (PG_VIEWS_COLUMNS, _pg_views),
    "pg_indexes": (PG_INDEXES_COLUMNS, _pg_indexes),
    "pg_sequence": (PG_SEQUENCE_COLUMNS, _pg_sequence),
    "pg_stat_activity": (PG_STAT_ACTIVITY_COLUMNS, _pg_stat_activity),
    "information_schema_tables": (INFORMATION_SCHEMA_TABLES_COLUMNS, _information_schema_tables),
    "information_schema_columns": (INFORMATION_SCHEMA_COLUMNS_COLUMNS, _information_schema_columns),
    "information_schema_schemata": (INFORMATION_SCHEMA_SCHEMATA_COLUMNS, _information_schema_schemata),
    "information_schema_table_constraints": (
        INFORMATION_SCHEMA_TABLE_CONSTRAINTS_COLUMNS,
        _information_schema_table_constraints,
    ),
    "information_schema_key_column_usage": (
        INFORMATION_SCHEMA_KEY_COLUMN_USAGE_COLUMNS,
        _information_schema_key_column_usage,
    ),
    "pg_description": (
        ("objoid oid", "classoid oid", "objsubid int4", "description text"), _empty),
    "pg_shdescription": (("objoid oid", "classoid oid", "description text"), _empty),
    "pg_inherits": (
        ("inhrelid oid", "inhparent oid", "inhseqno int4", "inhdetachpending bool"), _empty),
    "pg_collation": (
        ("oid oid", "collname name", "collnamespace oid", "collowner oid", "collprovider char",
         "collisdeterministic bool", "collencoding int4", "collcollate text", "collctype text",
         "colliculocale text", "collversion text"), _empty),
    "pg_tablespace": (
        ("oid oid", "spcname name", "spcowner oid", "spcacl text", "spcoptions text"), _empty),
    "pg_extension": (
        ("oid oid", "extname name", "extowner oid", "extnamespace oid", "extrelocatable bool",
         "extversion text", "extconfig text", "extcondition text"), _empty),
    "pg_partitioned_table": (
        ("partrelid oid", "partstrat char", "partnatts int2", "partdefid oid",
         "partattrs text", "partclass text", "partcollation text", "partexprs text"), _empty),
    "pg_trigger": (
        ("oid oid", "tgrelid oid", "tgparentid oid", "tgname name", "tgfoid oid",
         "tgtype int2", "tgenabled char", "tgisinternal bool", "tgconstrrelid oid",
         "tgconstrindid oid", "tgconstraint oid", "tgdeferrable bool", "tginitdeferred bool",
         "tgnargs int2", "tgattr text", "tgargs bytea", "tgqual text", "tgoldtable name",
         "tgnewtable name"), _empty),
    "pg_rewrite": (
        ("oid oid", "rulename name", "ev_class oid", "ev_type char", "ev_enabled char",
         "is_instead bool", "ev_qual text", "ev_action text"), _empty),
    "pg_policy": (
        ("oid oid", "polname name", "polrelid oid", "polcmd char", "polpermissive bool",
         "polroles text", "polqual text", "polwithcheck text"), _empty),
    "pg_statistic_ext": (
        ("oid oid", "stxrelid oid", "stxname name", "stxnamespace oid", "stxowner oid",
         "stxstattarget int4", "stxkeys text", "stxkind text", "stxexprs text"), _empty),
    "pg_publication": (
        ("oid oid", "pubname name", "pubowner oid", "puballtables bool", "pubinsert bool",
         "pubupdate bool", "pubdelete bool", "pubtruncate bool", "pubviaroot bool"), _empty),
    "pg_publication_rel": (
        ("oid oid", "prpubid oid", "prrelid oid", "prqual text", "prattrs text"), _empty),
    "pg_publication_namespace": (("oid oid", "pnpubid oid", "pnnspid oid"), _empty),
    "pg_depend": (
        ("classid oid", "objid oid", "objsubid int4", "refclassid oid", "refobjid oid",
         "refobjsubid int4", "deptype char"), _empty),
    "pg_foreign_table": (("ftrelid oid", "ftserver oid", "ftoptions text"), _empty),
    "pg_matviews": (
        ("schemaname name", "matviewname name", "matviewowner name", "tablespace name",
         "hasindexes bool", "ispopulated bool", "definition text"), _empty),
    "pg_auth_members": (
        ("oid oid", "roleid oid", "member oid", "grantor oid", "admin_option bool"), _empty),
    "pg_opclass": (
        ("oid oid", "opcmethod oid", "opcname name", "opcnamespace oid", "opcowner oid",
         "opcfamily oid", "opcintype oid", "opcdefault bool", "opckeytype oid"), _empty),
    "pg_enum": (("oid oid", "enumtypid oid", "enumsortorder float4", "enumlabel name"), _empty),
    "pg_range": (("rngtypid oid", "rngsubtype oid", "rngmultitypid oid"), _empty),
}  # fmt: skip
_PRODUCERS.update({name: producer for name, (_, producer) in TABLES.items()})
