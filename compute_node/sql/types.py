"""PostgreSQL types of SQLite columns.

Tables are created with PostgreSQL type names as their SQLite declared types
(`amount NUMERIC(10,2)`, `created TIMESTAMPTZ`), which SQLite keeps verbatim and
maps to a storage affinity by its own rules. This module reads a declared type
back as the canonical PostgreSQL type name (borealis/pgwire/types.py names).
SERIAL columns are declared `INTEGER PRIMARY KEY` (the only form that is SQLite's
auto-assigned rowid), so they read back as int4.
"""

from __future__ import annotations

import functools
import re

_CANONICAL = {
    "int": "int4",
    "integer": "int4",
    "int4": "int4",
    "serial": "int4",
    "serial4": "int4",
    "bigint": "int8",
    "int8": "int8",
    "bigserial": "int8",
    "serial8": "int8",
    "smallint": "int2",
    "int2": "int2",
    "smallserial": "int2",
    "boolean": "bool",
    "bool": "bool",
    "numeric": "numeric",
    "decimal": "numeric",
    "real": "float4",
    "float4": "float4",
    "double precision": "float8",
    "double": "float8",
    "float8": "float8",
    "float": "float8",
    "text": "text",
    "varchar": "varchar",
    "character varying": "varchar",
    "char": "bpchar",
    "character": "bpchar",
    "bpchar": "bpchar",
    "bytea": "bytea",
    "blob": "bytea",
    "date": "date",
    "time": "time",
    "time without time zone": "time",
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "datetime": "timestamp",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "json": "json",
    "jsonb": "jsonb",
    "oid": "oid",
    "name": "name",
}
_MODIFIER = re.compile(r"\s*\(.*\)\s*")


@functools.lru_cache(maxsize=1024)
def pg_type_of_declared(declared: str | None) -> str:
    """The canonical PostgreSQL type name of an SQLite declared column type.
    Unknown names fall back on SQLite's affinity rules (section 3.1 of its
    datatype documentation); no declared type at all reads as text."""
    if not declared:
        return "text"
    base = " ".join(_MODIFIER.sub(" ", declared).lower().split())
    found = _CANONICAL.get(base)
    if found is not None:
        return found
    upper = base.upper()
    if "INT" in upper:
        return "int8"
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return "text"
    if "BLOB" in upper:
        return "bytea"
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return "float8"
    return "numeric"


def type_modifier_of(declared: str | None) -> int:
    """atttypmod as PostgreSQL stores it: varchar(n)/char(n) -> n + 4,
    numeric(p, s) -> ((p << 16) | s) + 4, else -1."""
    if not declared:
        return -1
    match = re.search(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", declared)
    if match is None:
        return -1
    name = pg_type_of_declared(declared)
    if name in ("varchar", "bpchar"):
        return int(match[1]) + 4
    if name == "numeric":
        return ((int(match[1]) << 16) | int(match[2] or 0)) + 4
    return -1
