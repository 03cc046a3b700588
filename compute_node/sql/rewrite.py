"""Rewrites of a parsed PostgreSQL expression tree into one sqlglot's SQLite generator
prints as the SQLite we want.

sqlglot's compiled generator cannot be subclassed from Python, so every fix is made
on the tree: where SQLite needs text sqlglot would not print, the node becomes an
`exp.Var` (printed verbatim) or an `exp.Anonymous` function call.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from borealis.errors import SqlError
from compute_node.sql.infer import canonical_of

# SQL functions the catalog emulation registers on every connection; translation
# emits calls to them. One place, so the catalog engineer can check the list.
CATALOG_FUNCTIONS: tuple[str, ...] = (
    "regclass",  # regclass(name_or_oid) -> oid (int), NULL when unknown
    "regclass_name",  # regclass_name(oid_or_name) -> relation name (text)
    "regtype",  # regtype(name_or_oid) -> type oid
    "regtype_name",  # regtype_name(oid_or_name) -> type name
    "regproc",  # regproc(name_or_oid) -> function oid
    "regproc_name",  # regproc_name(oid) -> function name
    "regnamespace",  # regnamespace(name_or_oid) -> namespace oid
    "pg_regex_match",  # pg_regex_match(string, pattern) -> 1/0 (PostgreSQL ~)
    "pg_regex_imatch",  # pg_regex_imatch(string, pattern) -> 1/0 (~*)
    "pg_like",  # pg_like(string, pattern) -> 1/0 (case-sensitive LIKE, \ escape)
    "pg_div",  # pg_div(a, b) -> a / b; 22012 when b is 0 (SQLite gives NULL)
    "pg_mod",  # pg_mod(a, b) -> a % b; 22012 when b is 0
    "pg_instant",  # pg_instant(timestamp text in any zone form) -> UTC text SQLite reads
)

# The SQLite expression of a transaction-time value outside a statement (column
# DEFAULTs): SQLite's clock, in the text form the session binds for now().
_CLOCK_NOW = "strftime('%Y-%m-%d %H:%M:%f+00:00', 'now')"
# SQLite's date functions do not read PostgreSQL's '+00' zone suffix, and values
# written by clients may carry any zone: EXTRACT and casts go through pg_instant().
_JSON_FUNCTIONS = {
    "json_build_object": "json_object",
    "jsonb_build_object": "json_object",
    "json_build_array": "json_array",
    "jsonb_build_array": "json_array",
    "json_agg": "json_group_array",
    "jsonb_agg": "json_group_array",
    "json_object_agg": "json_group_object",
    "jsonb_object_agg": "json_group_object",
    "jsonb_array_length": "json_array_length",
    "json_array_length": "json_array_length",
    "jsonb_typeof": "json_type",
    "json_typeof": "json_type",
    "to_json": "json_quote",
    "to_jsonb": "json_quote",
}
_EXTRACT_FORMATS = {
    "year": "%Y",
    "month": "%m",
    "day": "%d",
    "hour": "%H",
    "minute": "%M",
    "dow": "%w",
    "doy": "%j",
}
_REGEX_OPERATORS = {
    "~": ("pg_regex_match", False),
    "~*": ("pg_regex_imatch", False),
    "!~": ("pg_regex_match", True),
    "!~*": ("pg_regex_imatch", True),
}
_TRUE_WORDS = "('t', 'true', 'y', 'yes', 'on', '1')"
_FALSE_WORDS = "('f', 'false', 'n', 'no', 'off', '0')"


def unsupported(feature: str) -> SqlError:
    return SqlError(f"{feature} is not supported", "0A000")


@dataclass
class Rewriter:
    """One statement's rewrite. `now_index` is the ?NNN slot of the transaction
    time; `in_ddl` makes now() read SQLite's clock (DEFAULTs cannot bind)."""

    now_index: int
    in_ddl: bool = False
    uses_now: bool = False

    def __call__(self, node: exp.Expression) -> exp.Expression:
        handler = _HANDLERS.get(type(node))
        return handler(self, node) if handler is not None else node

    def rewrite(self, node: exp.Expression) -> exp.Expression:
        """The tree rewritten bottom-up: children first, so a handler sees its
        operands in their SQLite form (sqlglot's transform does not descend into
        a replaced node)."""
        for key, value in list(node.args.items()):
            if isinstance(value, exp.Expression):
                new = self.rewrite(value)
                if new is not value:
                    node.set(key, new)
            elif isinstance(value, list) and any(isinstance(v, exp.Expression) for v in value):
                node.set(
                    key, [self.rewrite(v) if isinstance(v, exp.Expression) else v for v in value]
                )
        return self(node)

    def now(self) -> exp.Expression:
        if self.in_ddl:
            return exp.Var(this=f"({_CLOCK_NOW})")
        self.uses_now = True
        return exp.Var(this=f"?{self.now_index}")


def _call(name: str, *arguments: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(arguments))


def _raw(text: str) -> exp.Expression:
    return exp.Var(this=text)


def _instant(node: exp.Expression) -> exp.Expression:
    return _call("pg_instant", node)


def _parameter(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    number = node.this.this if isinstance(node.this, exp.Literal) else None
    if number is None:
        raise unsupported(f"parameter {node.sql('postgres')}")
    return _raw(f"?{int(number)}")


def _table(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    if isinstance(node.this, exp.ExplodingGenerateSeries):
        return _generate_series(node)
    schema = node.db.lower() if node.db else ""
    if not schema:
        return node
    if schema in ("public", "pg_catalog"):
        node.set("db", None)
        node.set("catalog", None)
        return node
    if schema == "information_schema":
        node.set("db", None)
        node.set("catalog", None)
        node.set("this", exp.to_identifier(f"information_schema_{node.name.lower()}"))
        return node
    raise SqlError(f'schema "{schema}" does not exist', "3F000")


def _column(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """A column named with its schema (pg_catalog.pg_class.relname) loses the schema
    as its table does (see _table)."""
    schema = node.db.lower() if node.db else ""
    if not schema:
        return node
    node.set("db", None)
    node.set("catalog", None)
    if schema == "information_schema":
        node.set("table", exp.to_identifier(f"information_schema_{node.table.lower()}"))
    elif schema not in ("public", "pg_catalog"):
        raise SqlError(f'schema "{schema}" does not exist', "3F000")
    return node


def _values(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """(VALUES ...) AS t(a, b) in FROM: SQLite names VALUES columns column1, column2,
    ... and takes no column list in an alias, so select them under the alias's names
    (SQLAlchemy's insertmanyvalues sends INSERT .. SELECT .. FROM (VALUES ..) AS t(..))."""
    alias = node.args.get("alias")
    if alias is None or not alias.columns:
        return node
    names = [column.name for column in alias.columns]
    values = exp.Values(expressions=node.expressions)
    select = exp.Select(
        expressions=[
            exp.alias_(exp.column(f"column{index + 1}"), name, quoted=True)
            for index, name in enumerate(names)
        ]
    ).from_(exp.Subquery(this=values))
    return exp.Subquery(this=select, alias=exp.TableAlias(this=alias.this))


def _generate_series(node: exp.Table) -> exp.Expression:
    """generate_series(a, b[, step]) in FROM as a recursive CTE subquery whose
    column is named as PostgreSQL names it (the alias's column, else the alias,
    else generate_series)."""
    series = node.this
    start, end = series.args["start"], series.args["end"]
    step = series.args.get("step") or exp.Literal.number(1)
    alias = node.args.get("alias")
    table_name = alias.name if alias is not None and alias.name else "generate_series"
    columns = alias.columns if alias is not None else []
    column = columns[0].name if columns else table_name
    sql_start, sql_end, sql_step = (part.sql("sqlite") for part in (start, end, step))
    condition = (
        f"CASE WHEN ({sql_step}) > 0 THEN v + ({sql_step}) <= ({sql_end}) "
        f"ELSE v + ({sql_step}) >= ({sql_end}) END"
    )
    text = (
        f"(WITH RECURSIVE s(v) AS (SELECT ({sql_start}) WHERE CASE WHEN ({sql_step}) > 0 "
        f"THEN ({sql_start}) <= ({sql_end}) ELSE ({sql_start}) >= ({sql_end}) END "
        f"UNION ALL SELECT v + ({sql_step}) FROM s WHERE {condition}) "
        f'SELECT v AS "{column}" FROM s) AS "{table_name}"'
    )
    return _raw(text)


def _dot(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """pg_catalog.f(...) is f(...)."""
    if isinstance(node.this, exp.Identifier) and node.this.name.lower() in (
        "pg_catalog",
        "public",
    ):
        return node.expression
    return node


def _anonymous(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    name = node.name.lower()
    if name in ("transaction_timestamp", "statement_timestamp"):
        return rewriter.now()
    if name == "clock_timestamp":
        return _raw(_CLOCK_NOW)
    if name in _JSON_FUNCTIONS:
        node.set("this", _JSON_FUNCTIONS[name])
        return node
    if name in ("generate_series", "unnest"):
        raise unsupported(f"{name}() outside FROM")
    return node


def _cast_to_integer(node: exp.Expression) -> exp.Expression:
    inner = node
    if isinstance(inner, exp.Literal) and not inner.is_string and "." in inner.this:
        inner = _call("round", inner)
    return exp.Cast(this=inner, to=exp.DataType.build("INTEGER"))


def _cast_to_bool(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Literal) and node.is_string:
        word = node.this.strip().lower()
        if word in _TRUE_WORDS:
            return exp.Literal.number(1)
        if word in _FALSE_WORDS:
            return exp.Literal.number(0)
        raise SqlError(f'invalid input syntax for type boolean: "{node.this}"', "22P02")
    text = f"lower(CAST({node.sql('sqlite')} AS TEXT))"
    return _raw(
        f"(CASE WHEN {text} IN {_TRUE_WORDS} THEN 1 WHEN {text} IN {_FALSE_WORDS} THEN 0 END)"
    )


def _cast(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    target = canonical_of(node.to)
    inner = node.this
    if target in ("int2", "int4", "int8"):
        return _cast_to_integer(inner)
    if target == "numeric":
        modifiers = node.to.expressions
        cast = exp.Cast(this=inner, to=exp.DataType(this=exp.DType.USERDEFINED, kind="NUMERIC"))
        if len(modifiers) == 2:
            return _call("round", cast, modifiers[1].this)
        return cast
    if target in ("float4", "float8"):
        return exp.Cast(this=inner, to=exp.DataType.build("REAL"))
    if target in ("text", "varchar", "bpchar", "name"):
        if isinstance(inner, exp.Anonymous) and inner.name in ("regclass", "regtype", "regproc"):
            return _call(f"{inner.name}_name", *inner.expressions)
        return exp.Cast(this=inner, to=exp.DataType.build("TEXT"))
    if target == "bool":
        return _cast_to_bool(inner)
    if target in ("regclass", "regtype", "regproc"):
        return _call(target, inner)
    if target == "oid":
        return _cast_to_integer(inner)
    if target == "bytea":
        return exp.Cast(this=inner, to=exp.DataType.build("BLOB"))
    if target in ("json", "jsonb"):
        return _call("json", inner)
    if target == "date":
        return _call("date", _instant(inner))
    if target in ("timestamp", "timestamptz", "uuid", "time"):
        # Kept as their text; the session formats results by the column's type.
        return inner
    raise unsupported(f"cast to {node.to.sql('postgres')}")


def _current_date(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    if rewriter.in_ddl:
        return _raw("(date('now'))")
    return _call("date", _instant(rewriter.now()))


def _operator(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    symbol = str(node.args.get("operator") or "").split(".")[-1].strip()
    if symbol in _REGEX_OPERATORS:
        name, negated = _REGEX_OPERATORS[symbol]
        call = _call(name, node.this, node.expression)
        return exp.Not(this=call) if negated else call
    comparison = {
        "=": exp.EQ,
        "<>": exp.NEQ,
        "<": exp.LT,
        ">": exp.GT,
        "<=": exp.LTE,
        ">=": exp.GTE,
    }
    if symbol in comparison:
        return comparison[symbol](this=node.this, expression=node.expression)
    raise unsupported(f"operator {symbol}")


def _regex(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    name = "pg_regex_imatch" if isinstance(node, exp.RegexpILike) else "pg_regex_match"
    return _call(name, node.this, node.expression)


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern (backslash escapes) as the equivalent GLOB pattern."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        character = pattern[index]
        if character == "\\" and index + 1 < len(pattern):
            index += 1
            character = pattern[index]
            out.append(f"[{character}]" if character in "*?[" else character)
        elif character == "%":
            out.append("*")
        elif character == "_":
            out.append("?")
        elif character in "*?[":
            out.append(f"[{character}]")
        else:
            out.append(character)
        index += 1
    return "".join(out)


def _like(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """LIKE is case-sensitive in PostgreSQL; SQLite's is not. A literal pattern
    becomes GLOB (which can use an index); any other pattern calls pg_like."""
    pattern = node.expression
    if isinstance(pattern, exp.Literal) and pattern.is_string:
        return exp.Glob(this=node.this, expression=exp.Literal.string(like_to_glob(pattern.this)))
    return _call("pg_like", node.this, pattern)


def _ilike(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    # SQLite's LIKE ignores case for ASCII letters, as ILIKE does for all.
    return exp.Like(this=node.this, expression=node.expression)


def _json_path(node: exp.Expression) -> exp.Expression:
    path = node.expression
    if not (isinstance(path, exp.Literal) and path.is_string):
        raise unsupported("#> / #>> with a non-literal path")
    steps = [step.strip().strip('"') for step in path.this.strip("{}").split(",") if step.strip()]
    text = "$" + "".join(f"[{step}]" if step.isdigit() else f'."{step}"' for step in steps)
    return exp.Literal.string(text)


def _json_extract_path(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    call = _call("json_extract", node.this, _json_path(node))
    if isinstance(node, exp.JSONBExtract):
        return exp.Paren(this=exp.JSONExtract(this=node.this, expression=_json_path(node)))
    return call


def _byte_string(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """E'..' strings: sqlglot has already decoded the escapes into the value."""
    return exp.Literal.string(node.this)


def _extract(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    field = node.this.name.lower()
    source = _instant(node.expression)
    if field == "epoch":
        return _call("unixepoch", source, exp.Literal.string("subsec"))
    if field == "second":
        return exp.Cast(
            this=_call("strftime", exp.Literal.string("%f"), source), to=exp.DataType.build("REAL")
        )
    if field in _EXTRACT_FORMATS:
        call = _call("strftime", exp.Literal.string(_EXTRACT_FORMATS[field]), source)
        return exp.Cast(this=call, to=exp.DataType.build("INTEGER"))
    raise unsupported(f"EXTRACT({field.upper()} ...)")


def _any(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """x = ANY(ARRAY[...]) is x IN (...); other ANY/ALL forms need arrays."""
    parent = node.parent
    inner = node.this.this if isinstance(node.this, exp.Paren) else node.this
    if isinstance(parent, exp.EQ) and isinstance(inner, exp.Array):
        return node
    raise unsupported("ANY/ALL over a non-literal array")


def _eq(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    right = node.expression
    if isinstance(right, exp.Any):
        inner = right.this.this if isinstance(right.this, exp.Paren) else right.this
        if isinstance(inner, exp.Array):
            return exp.In(this=node.this, expressions=list(inner.expressions))
        raise unsupported("= ANY over a non-literal array")
    return node


def _array(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    parent = node.parent.parent if isinstance(node.parent, exp.Paren) else node.parent
    if isinstance(parent, exp.Any) and isinstance(parent.parent, exp.EQ):
        return node
    raise unsupported("arrays")


def _contains(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    raise unsupported("jsonb containment operators (@>, <@)")


def _ordered_index(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """NULLS FIRST/LAST is only meaningful (and only valid in SQLite) in ORDER BY."""
    parent = node.parent
    if isinstance(parent, (exp.IndexParameters, exp.OnConflict)):
        return node.this if not node.args.get("desc") else exp.Ordered(this=node.this, desc=True)
    return node


def _collate(rewriter: Rewriter, node: exp.Expression) -> exp.Expression:
    """PostgreSQL's default and C collations are SQLite's BINARY: drop them (psql's
    \\d queries say COLLATE pg_catalog.default); any other collation is refused."""
    collation = node.expression
    name = (
        collation.name
        if isinstance(collation, (exp.Column, exp.Identifier))
        else str(collation.this)
    ).lower()
    if name.strip('"') in ("default", "c", "posix", "ucs_basic"):
        return node.this
    raise unsupported(f'collation "{name}"')


_HANDLERS = {
    # Division by zero is an error in PostgreSQL, NULL in SQLite.
    exp.Div: lambda rewriter, node: _call("pg_div", node.this, node.expression),
    exp.Mod: lambda rewriter, node: _call("pg_mod", node.this, node.expression),
    exp.Parameter: _parameter,
    exp.Collate: _collate,
    exp.Column: _column,
    exp.Values: _values,
    # version() is the catalog's (PostgreSQL's text), not sqlite_version().
    exp.CurrentVersion: lambda rewriter, node: _call("version"),
    exp.Table: _table,
    exp.Dot: _dot,
    exp.Anonymous: _anonymous,
    exp.Cast: _cast,
    exp.CurrentTimestamp: lambda rewriter, node: rewriter.now(),
    exp.Localtimestamp: lambda rewriter, node: rewriter.now(),
    exp.CurrentDate: _current_date,
    exp.Operator: _operator,
    exp.RegexpLike: _regex,
    exp.RegexpILike: _regex,
    exp.Like: _like,
    exp.ILike: _ilike,
    exp.JSONBExtractScalar: _json_extract_path,
    exp.JSONBExtract: _json_extract_path,
    exp.ByteString: _byte_string,
    exp.Extract: _extract,
    exp.EQ: _eq,
    exp.Any: _any,
    exp.Array: _array,
    exp.ArrayContainsAll: _contains,
    exp.ArrayContainedBy: _contains,
    exp.Ordered: _ordered_index,
}
