"""Hand-written SQLite forms of the catalog queries that real clients send and that
do not translate (LATERAL, arrays, unnest, generate_subscripts, array_position,
::regclass chains).

The queries were captured from PostgreSQL 15's statement log (the fixture files
under tests/fixtures/client_queries/). A query is recognised by its text with
whitespace collapsed, case folded, literals taken out, and placeholders without
their numbers; a parenthesised list of placeholders (SQLAlchemy's `IN ($6, $7)`
of table OIDs, whose length varies with the number of tables reflected) counts as
one, so one captured text covers every length.

Parameters of a match: the SQLite text numbers them. `?n` is the captured text's
`$n` (extended protocol); where the captured `$n` is a list, `?n` becomes the
given list (`IN (?6)` -> `IN (?6, ?7)`), and the later `?m` follow the given
numbering. `:Ln` is the n-th literal taken out of the text; literals are bound
after the client's own parameters (`?p+1 ...` where p is how many the client has),
so the caller binds `client_parameters + literals`. With the simple protocol p is
0. A mapping must use the highest-numbered parameter of its captured text, since
SQLite counts parameters up to the highest used.

Keep this list short and say why each entry exists: the general translation is
preferred.
- pgbench's partition probe (LATERAL, array_position), psql's \\du roles (ARRAY()
  subquery) and \\d TABLE footers (pg_partition_ancestors, arrays, ANY over arrays).
- SQLAlchemy 2's get_indexes and get_pk_constraint / get_unique_constraints
  (unnest and generate_subscripts in a select list, array_agg ... ORDER BY).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

_LITERAL = re.compile(r"E?'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\$\d+|\s+|[^\s'$\d]+|.", re.S)


@dataclass(frozen=True, slots=True)
class _Mapping:
    sqlite_sql: str
    """SQLite text: ?n for the client's $n, :Ln for the literals (module docstring)."""
    columns: tuple[tuple[str, str], ...]


# Statement texts whose lookup (a match or None) is remembered.
LOOKUP_CACHE_ENTRIES = 512


def _normalise(sql: str) -> tuple[str, tuple[Any, ...], int]:
    """(shape, literals, highest $n) of a statement: literals become '?', runs of
    whitespace one space, the rest lower case; a trailing ';' is dropped."""
    parts: list[str] = []
    literals: list[Any] = []
    placeholder_max = 0
    for token in _LITERAL.findall(sql.strip().rstrip(";").strip()):
        if token.isspace():
            parts.append(" ")
        elif token.startswith(("'", "E'")):
            literals.append(token[token.index("'") + 1 : -1].replace("''", "'"))
            parts.append("?")
        elif token[0].isdigit():
            literals.append(float(token) if "." in token else int(token))
            parts.append("?")
        elif token.startswith("$"):
            placeholder_max = max(placeholder_max, int(token[1:]))
            parts.append(token)
        else:
            parts.append(token.lower())
    shape = re.sub(r" ?([(),=]) ?", r"\1", "".join(parts)).strip()
    return shape, tuple(literals), placeholder_max


_PGBENCH_PARTITIONS = """select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' and o.n is not null group by 1, 2 order by 1 asc limit 1"""  # noqa: E501

_PSQL_ROLES = """SELECT r.rolname, r.rolsuper, r.rolinherit,
  r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
  r.rolconnlimit, r.rolvaliduntil,
  ARRAY(SELECT b.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid)
        WHERE m.member = r.oid) as memberof
, r.rolreplication
, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY 1;"""

_PSQL_REFERENCED_BY = """SELECT conname, conrelid::pg_catalog.regclass AS ontable,
       pg_catalog.pg_get_constraintdef(oid, true) AS condef
  FROM pg_catalog.pg_constraint c
 WHERE confrelid IN (SELECT pg_catalog.pg_partition_ancestors('16393')
                     UNION ALL VALUES ('16393'::pg_catalog.regclass))
       AND contype = 'f' AND conparentid = 0
ORDER BY conname;"""

_PSQL_POLICIES = """SELECT pol.polname, pol.polpermissive,
  CASE WHEN pol.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any (pol.polroles) order by 1),',') END,
  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
  CASE pol.polcmd
    WHEN 'r' THEN 'SELECT'
    WHEN 'a' THEN 'INSERT'
    WHEN 'w' THEN 'UPDATE'
    WHEN 'd' THEN 'DELETE'
    END AS cmd
FROM pg_catalog.pg_policy pol
WHERE pol.polrelid = '16393' ORDER BY 1;"""  # noqa: E501

_PSQL_STATISTICS = """SELECT oid, stxrelid::pg_catalog.regclass, stxnamespace::pg_catalog.regnamespace::pg_catalog.text AS nsp, stxname,
pg_catalog.pg_get_statisticsobjdef_columns(oid) AS columns,
  'd' = any(stxkind) AS ndist_enabled,
  'f' = any(stxkind) AS deps_enabled,
  'm' = any(stxkind) AS mcv_enabled,
stxstattarget
FROM pg_catalog.pg_statistic_ext
WHERE stxrelid = '16393'
ORDER BY nsp, stxname;"""  # noqa: E501

_PSQL_PUBLICATIONS = """SELECT pubname
     , NULL
     , NULL
FROM pg_catalog.pg_publication p
     JOIN pg_catalog.pg_publication_namespace pn ON p.oid = pn.pnpubid
     JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.pnnspid
WHERE pc.oid ='16393' and pg_catalog.pg_relation_is_publishable('16393')
UNION
SELECT pubname
     , pg_get_expr(pr.prqual, c.oid)
     , (CASE WHEN pr.prattrs IS NOT NULL THEN
         (SELECT string_agg(attname, ', ')
           FROM pg_catalog.generate_series(0, pg_catalog.array_upper(pr.prattrs::pg_catalog.int2[], 1)) s,
                pg_catalog.pg_attribute
          WHERE attrelid = pr.prrelid AND attnum = prattrs[s])
        ELSE NULL END) FROM pg_catalog.pg_publication p
     JOIN pg_catalog.pg_publication_rel pr ON p.oid = pr.prpubid
     JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
WHERE pr.prrelid = '16393'
UNION
SELECT pubname
     , NULL
     , NULL
FROM pg_catalog.pg_publication p
WHERE p.puballtables AND pg_catalog.pg_relation_is_publishable('16393')
ORDER BY 1;"""  # noqa: E501

_PSQL_TRIGGERS = """SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid, true), t.tgenabled, t.tgisinternal,
  CASE WHEN t.tgparentid != 0 THEN
    (SELECT u.tgrelid::pg_catalog.regclass
     FROM pg_catalog.pg_trigger AS u,
          pg_catalog.pg_partition_ancestors(t.tgrelid) WITH ORDINALITY AS a(relid, depth)
     WHERE u.tgname = t.tgname AND u.tgrelid = a.relid
           AND u.tgparentid = 0
     ORDER BY a.depth LIMIT 1)
  END AS parent
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = '16393' AND (NOT t.tgisinternal OR (t.tgisinternal AND t.tgenabled = 'D'))
ORDER BY 1;"""

_SQLALCHEMY_INDEXES = """SELECT pg_catalog.pg_index.indrelid, pg_catalog.pg_class.relname, pg_catalog.pg_index.indisunique, pg_catalog.pg_index.indisvalid, pg_catalog.pg_constraint.conrelid IS NOT NULL AS has_constraint, pg_catalog.pg_index.indoption, pg_catalog.pg_class.reloptions, pg_catalog.pg_class.relam, CASE WHEN (pg_catalog.pg_index.indpred IS NOT NULL) THEN pg_catalog.pg_get_expr(pg_catalog.pg_index.indpred, pg_catalog.pg_index.indrelid) END AS filter_definition, pg_catalog.pg_index.indnkeyatts, pg_catalog.pg_index.indnullsnotdistinct, idx_cols.elements, idx_cols.elements_is_expr, idx_cols.elements_opclass
FROM pg_catalog.pg_index JOIN pg_catalog.pg_class ON pg_catalog.pg_index.indexrelid = pg_catalog.pg_class.oid LEFT OUTER JOIN (SELECT idx_attr.indexrelid AS indexrelid, min(idx_attr.indrelid) AS min_1, array_agg(idx_attr.element ORDER BY idx_attr.ord) AS elements, array_agg(idx_attr.is_expr ORDER BY idx_attr.ord) AS elements_is_expr, array_agg(idx_attr.att_opclass ORDER BY idx_attr.ord) AS elements_opclass
FROM (SELECT idx.indexrelid AS indexrelid, idx.indrelid AS indrelid, idx.ord AS ord, CASE WHEN (idx.attnum = $1::INTEGER) THEN pg_catalog.pg_get_indexdef(idx.indexrelid, idx.ord + $2::INTEGER, $3) ELSE CAST(pg_catalog.pg_attribute.attname AS TEXT) END AS element, idx.attnum = $4::INTEGER AS is_expr, CAST(idx.att_opclass AS BIGINT) AS att_opclass
FROM (SELECT pg_catalog.pg_index.indexrelid AS indexrelid, pg_catalog.pg_index.indrelid AS indrelid, unnest(pg_catalog.pg_index.indkey) AS attnum, unnest(pg_catalog.pg_index.indclass) AS att_opclass, generate_subscripts(pg_catalog.pg_index.indkey, $5::INTEGER) AS ord
FROM pg_catalog.pg_index
WHERE NOT pg_catalog.pg_index.indisprimary AND pg_catalog.pg_index.indrelid IN ($6)) AS idx LEFT OUTER JOIN pg_catalog.pg_attribute ON pg_catalog.pg_attribute.attnum = idx.attnum AND pg_catalog.pg_attribute.attrelid = idx.indrelid
WHERE idx.indrelid IN ($6)) AS idx_attr GROUP BY idx_attr.indexrelid) AS idx_cols ON pg_catalog.pg_index.indexrelid = idx_cols.indexrelid LEFT OUTER JOIN pg_catalog.pg_constraint ON pg_catalog.pg_index.indrelid = pg_catalog.pg_constraint.conrelid AND pg_catalog.pg_index.indexrelid = pg_catalog.pg_constraint.conindid AND pg_catalog.pg_constraint.contype = ANY (ARRAY[$7::VARCHAR, $8::VARCHAR, $9::VARCHAR])
WHERE pg_catalog.pg_index.indrelid IN ($6) AND NOT pg_catalog.pg_index.indisprimary ORDER BY pg_catalog.pg_index.indrelid, pg_catalog.pg_class.relname"""  # noqa: E501

_SQLALCHEMY_CONSTRAINTS = """SELECT attr.conrelid, array_agg(CAST(attr.attname AS TEXT) ORDER BY attr.ord) AS cols, attr.conname, min(attr.description) AS description, min(attr.indnkeyatts) AS indnkeyatts, bool_and(attr.indnullsnotdistinct) AS indnullsnotdistinct
FROM (SELECT con.conrelid AS conrelid, con.conname AS conname, con.description AS description, con.ord AS ord, con.indnkeyatts AS indnkeyatts, con.indnullsnotdistinct AS indnullsnotdistinct, pg_catalog.pg_attribute.attname AS attname
FROM pg_catalog.pg_attribute JOIN (SELECT pg_catalog.pg_constraint.conrelid AS conrelid, pg_catalog.pg_constraint.conname AS conname, unnest(pg_catalog.pg_index.indkey) AS attnum, generate_subscripts(pg_catalog.pg_index.indkey, $1::INTEGER) AS ord, pg_catalog.pg_index.indnkeyatts AS indnkeyatts, pg_catalog.pg_index.indnullsnotdistinct AS indnullsnotdistinct, pg_catalog.pg_description.description AS description
FROM pg_catalog.pg_constraint JOIN pg_catalog.pg_index ON pg_catalog.pg_constraint.conindid = pg_catalog.pg_index.indexrelid LEFT OUTER JOIN pg_catalog.pg_description ON pg_catalog.pg_description.objoid = pg_catalog.pg_constraint.oid AND pg_catalog.pg_description.classoid = CAST($2 AS REGCLASS)
WHERE pg_catalog.pg_constraint.contype = $3::VARCHAR AND pg_catalog.pg_constraint.conrelid IN ($4)) AS con ON pg_catalog.pg_attribute.attnum = con.attnum AND pg_catalog.pg_attribute.attrelid = con.conrelid
WHERE con.conrelid IN ($4)) AS attr GROUP BY attr.conrelid, attr.conname ORDER BY attr.conrelid, attr.conname"""  # noqa: E501

# The key columns of the primary key ($3 = 'p') or unique constraints ($3 = 'u') of
# the tables $4 (any number of OIDs). indkey is int2vector text ('2 3'): json_each
# over '[2,3]' is SQLite's unnest, its `key` generate_subscripts (from 0, not 1:
# only the order matters). array_agg is compute_node/engine/functions.py's aggregate
# that writes PostgreSQL's array text; min() of 0/1 is bool_and.
_SQLITE_CONSTRAINTS = """
SELECT c.conrelid, array_agg(a.attname ORDER BY k.key) AS cols, c.conname,
       min(d.description) AS description, min(i.indnkeyatts) AS indnkeyatts,
       min(i.indnullsnotdistinct) AS indnullsnotdistinct
FROM pg_constraint AS c
JOIN pg_index AS i ON c.conindid = i.indexrelid
JOIN json_each('[' || replace(i.indkey, ' ', ',') || ']') AS k
JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.value
LEFT JOIN pg_description AS d ON d.objoid = c.oid
WHERE c.contype = ?3 AND c.conrelid IN (?4)
GROUP BY c.conrelid, c.conname
ORDER BY c.conrelid, c.conname"""

# The elements of the indexes that are not primary keys of the tables $6 (any
# number of OIDs): an expression (attnum 0) reads as pg_get_indexdef of its
# position. $1..$5 are SQLAlchemy's constants 0, 1, true, 0, 1.
_SQLITE_INDEXES = """
WITH cols AS (
  SELECT i.indexrelid,
         array_agg(CASE WHEN k.value = 0 THEN pg_get_indexdef(i.indexrelid, k.key + 1, 1)
                        ELSE a.attname END ORDER BY k.key) AS elements,
         array_agg(CASE WHEN k.value = 0 THEN 't' ELSE 'f' END ORDER BY k.key)
             AS elements_is_expr,
         array_agg(0 ORDER BY k.key) AS elements_opclass
  FROM pg_index AS i
  JOIN json_each('[' || replace(i.indkey, ' ', ',') || ']') AS k
  LEFT JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.value
  WHERE NOT i.indisprimary AND i.indrelid IN (?6)
  GROUP BY i.indexrelid
)
SELECT i.indrelid, c.relname, i.indisunique, i.indisvalid,
       EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conrelid = i.indrelid
               AND k.conindid = i.indexrelid AND k.contype IN (?7, ?8, ?9)) AS has_constraint,
       i.indoption, c.reloptions, c.relam,
       CASE WHEN i.indpred IS NOT NULL THEN i.indpred END AS filter_definition,
       i.indnkeyatts, i.indnullsnotdistinct, cols.elements, cols.elements_is_expr,
       cols.elements_opclass
FROM pg_index AS i JOIN pg_class AS c ON i.indexrelid = c.oid
LEFT JOIN cols ON cols.indexrelid = i.indexrelid
WHERE i.indrelid IN (?6) AND NOT i.indisprimary
ORDER BY i.indrelid, c.relname"""

_PG_TO_SQLITE: tuple[tuple[str, _Mapping], ...] = (
    (
        _PGBENCH_PARTITIONS,
        _Mapping(
            "SELECT 1 AS n, NULL AS partstrat, 0 AS count FROM pg_class AS c "
            "WHERE c.relname = :L0 LIMIT 1",
            (("n", "int4"), ("partstrat", "char"), ("count", "int8")),
        ),
    ),
    (
        _PSQL_ROLES,
        _Mapping(
            "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
            "rolconnlimit, rolvaliduntil, '{}' AS memberof, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE NOT pg_regex_match(rolname, :L0) ORDER BY 1",
            (
                ("rolname", "name"),
                ("rolsuper", "bool"),
                ("rolinherit", "bool"),
                ("rolcreaterole", "bool"),
                ("rolcreatedb", "bool"),
                ("rolcanlogin", "bool"),
                ("rolconnlimit", "int4"),
                ("rolvaliduntil", "timestamptz"),
                ("memberof", "_name"),
                ("rolreplication", "bool"),
                ("rolbypassrls", "bool"),
            ),  # fmt: skip
        ),
    ),
    (
        _PSQL_REFERENCED_BY,
        _Mapping(
            "SELECT conname, regclass_name(conrelid) AS ontable, "
            "pg_get_constraintdef(oid, 1) AS condef FROM pg_constraint "
            "WHERE confrelid = CAST(:L1 AS INTEGER) AND contype = :L2 AND conparentid = :L3 "
            "ORDER BY conname",
            (("conname", "name"), ("ontable", "regclass"), ("condef", "text")),
        ),
    ),
    (
        _PSQL_POLICIES,
        _Mapping(
            "SELECT polname, polpermissive, NULL, NULL, NULL, NULL AS cmd FROM pg_policy "
            "WHERE polrelid = CAST(:L11 AS INTEGER) ORDER BY 1",
            (
                ("polname", "name"),
                ("polpermissive", "bool"),
                ("array_to_string", "text"),
                ("pg_get_expr", "text"),
                ("pg_get_expr", "text"),
                ("cmd", "text"),
            ),  # fmt: skip
        ),
    ),
    (
        _PSQL_STATISTICS,
        _Mapping(
            "SELECT oid, regclass_name(stxrelid) AS stxrelid, 'public' AS nsp, stxname, "
            "NULL AS columns, 0 AS ndist_enabled, 0 AS deps_enabled, 0 AS mcv_enabled, "
            "stxstattarget FROM pg_statistic_ext WHERE stxrelid = CAST(:L3 AS INTEGER) "
            "ORDER BY nsp, stxname",
            (
                ("oid", "oid"),
                ("stxrelid", "regclass"),
                ("nsp", "text"),
                ("stxname", "name"),
                ("columns", "text"),
                ("ndist_enabled", "bool"),
                ("deps_enabled", "bool"),
                ("mcv_enabled", "bool"),
                ("stxstattarget", "int4"),
            ),  # fmt: skip
        ),
    ),
    (
        _PSQL_PUBLICATIONS,
        _Mapping(
            "SELECT pubname, NULL, NULL FROM pg_publication "
            "WHERE pg_relation_is_publishable(:L0) ORDER BY 1",
            (("pubname", "name"), ("?column?", "text"), ("?column?", "text")),
        ),
    ),
    (
        _PSQL_TRIGGERS,
        _Mapping(
            "SELECT tgname, NULL, tgenabled, tgisinternal, NULL AS parent FROM pg_trigger "
            "WHERE tgrelid = CAST(:L3 AS INTEGER) ORDER BY 1",
            (
                ("tgname", "name"),
                ("pg_get_triggerdef", "text"),
                ("tgenabled", "char"),
                ("tgisinternal", "bool"),
                ("parent", "regclass"),
            ),  # fmt: skip
        ),
    ),
    (
        _SQLALCHEMY_INDEXES,
        _Mapping(
            _SQLITE_INDEXES,
            (
                ("indrelid", "oid"),
                ("relname", "name"),
                ("indisunique", "bool"),
                ("indisvalid", "bool"),
                ("has_constraint", "bool"),
                ("indoption", "int2vector"),
                ("reloptions", "_text"),
                ("relam", "oid"),
                ("filter_definition", "text"),
                ("indnkeyatts", "int2"),
                ("indnullsnotdistinct", "bool"),
                ("elements", "_text"),
                ("elements_is_expr", "_bool"),
                ("elements_opclass", "_int8"),
            ),  # fmt: skip
        ),
    ),
    (
        _SQLALCHEMY_CONSTRAINTS,
        _Mapping(
            _SQLITE_CONSTRAINTS,
            (
                ("conrelid", "oid"),
                ("cols", "_text"),
                ("conname", "name"),
                ("description", "text"),
                ("indnkeyatts", "int2"),
                ("indnullsnotdistinct", "bool"),
            ),  # fmt: skip
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class ClientQuery:
    """A recognised client query: what to run on SQLite and what it returns."""

    sqlite_sql: str
    literals: tuple[Any, ...]
    """Bound after the client's parameters (see the module docstring)."""
    columns: tuple[tuple[str, str], ...]
    """(name, PostgreSQL type name) of each result column."""
    parameter_count: int
    """How many parameters ($1 .. $n) the client's text has: the caller binds them all."""


@dataclass(frozen=True, slots=True)
class _Known:
    mapping: _Mapping
    slots: tuple[tuple[int, ...], ...]
    """The placeholder slots of the captured text (see `_slots`)."""


def _known(pg_sql: str, mapping: _Mapping) -> tuple[str, _Known]:
    shape, _, _ = _normalise(pg_sql)
    return _shape_without_numbers(shape), _Known(mapping, _slots(shape))


@functools.lru_cache(maxsize=LOOKUP_CACHE_ENTRIES)
def lookup(sql: str) -> ClientQuery | None:
    """The SQLite form of a known client query, or None. Cached by text: the
    session asks for every statement that names a pg_ object, and clients repeat
    their catalog queries."""
    shape, literals, placeholder_max = _normalise(sql)
    known = _BY_SHAPE.get(_shape_without_numbers(shape))
    if known is None:
        return None
    numbers = _renumbering(known.slots, _slots(shape))
    if numbers is None:
        return None
    used = [int(each) for each in _LITERAL_REFERENCE.findall(known.mapping.sqlite_sql)]
    # SQLite counts parameters up to the highest number used: bind no more literals.
    kept = literals[: max(used) + 1] if used else ()

    def reference(found: re.Match[str]) -> str:
        if found[1] is not None:
            return ", ".join(f"?{each}" for each in numbers[int(found[1])])
        return f"?{placeholder_max + int(found[2]) + 1}"

    sqlite_sql = _REFERENCE.sub(reference, known.mapping.sqlite_sql)
    return ClientQuery(sqlite_sql, kept, known.mapping.columns, placeholder_max)


# A parenthesised list of placeholders, each with an optional cast: `($6, $7)`,
# `($1::varchar)` (the shape has no spaces around commas and parentheses).
_PLACEHOLDER_LIST = re.compile(r"\((\$\d+(?:::[a-z]+)?(?:,\$\d+(?:::[a-z]+)?)*)\)")
_PLACEHOLDER_SLOT = re.compile(_PLACEHOLDER_LIST.pattern + r"|\$(\d+)")
_PLACEHOLDER_NUMBER = re.compile(r"\$(\d+)")


def _slots(shape: str) -> tuple[tuple[int, ...], ...]:
    """The placeholders of a shape in text order, a parenthesised list as one slot:
    'x in ($6,$7) and y=$8' -> ((6, 7), (8,))."""
    return tuple(
        tuple(int(each) for each in _PLACEHOLDER_NUMBER.findall(found[0]))
        for found in _PLACEHOLDER_SLOT.finditer(shape)
    )


def _shape_without_numbers(shape: str) -> str:
    """A shape that is the same whatever the length of its lists of placeholders
    (SQLAlchemy's `IN ($6, $7, ...)` of table OIDs) and so however they are numbered."""
    return _PLACEHOLDER_NUMBER.sub("$", _PLACEHOLDER_LIST.sub("($*)", shape))


def _renumbering(
    captured: tuple[tuple[int, ...], ...], given: tuple[tuple[int, ...], ...]
) -> dict[int, tuple[int, ...]] | None:
    """The given text's placeholders of each placeholder number of the captured text,
    slot by slot; None when the given text uses its placeholders differently (a
    number of the captured text would stand for two different lists)."""
    if len(captured) != len(given):
        return None
    numbers: dict[int, tuple[int, ...]] = {}
    for captured_slot, given_slot in zip(captured, given, strict=True):
        if len(captured_slot) == 1 and len(given_slot) >= 1:
            pairs = [(captured_slot[0], given_slot)]
        elif len(captured_slot) == len(given_slot):
            pairs = [
                (number, (each,)) for number, each in zip(captured_slot, given_slot, strict=True)
            ]
        else:
            return None
        for number, placeholders in pairs:
            if numbers.setdefault(number, placeholders) != placeholders:
                return None
    return numbers


# `?n` in a mapping's SQLite text is the captured text's `$n` (a list when `$n` was
# one); `:Ln` is its n-th literal.
_REFERENCE = re.compile(r"\?(\d+)|:L(\d+)\b")
_LITERAL_REFERENCE = re.compile(r":L(\d+)\b")

_BY_SHAPE: dict[str, _Known] = dict(_known(pg, mapping) for pg, mapping in _PG_TO_SQLITE)
