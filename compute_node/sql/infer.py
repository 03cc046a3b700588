"""PostgreSQL types of parameters and result columns, inferred from the parsed SQL.

Runs on the PostgreSQL AST (before the SQLite rewrite) with the table schema the
session provides. What it cannot infer it calls "unknown": the session then binds
parameters as text and looks at result values, as the protocol allows.
"""

from __future__ import annotations

from typing import Protocol

from sqlglot import exp

from compute_node.sql.types import pg_type_of_declared

UNKNOWN = "unknown"
_INT4_MAX = (1 << 31) - 1
_INT8_MAX = (1 << 63) - 1
_INTEGERS = ("int2", "int4", "int8")
_WIDTH = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}


class Schema(Protocol):
    """What translation may know about tables: their columns and PostgreSQL types."""

    def columns_of(self, table: str) -> tuple[tuple[str, str], ...] | None: ...


# Result types of functions by (lower-case) name; "arg" means the first argument's.
FUNCTION_TYPES: dict[str, str] = {
    "count": "int8",
    "now": "timestamptz",
    "transaction_timestamp": "timestamptz",
    "statement_timestamp": "timestamptz",
    "clock_timestamp": "timestamptz",
    "version": "text",
    "current_schema": "name",
    "current_database": "name",
    "current_user": "name",
    "session_user": "name",
    "current_setting": "text",
    "set_config": "text",
    "format_type": "text",
    "pg_get_expr": "text",
    "pg_get_indexdef": "text",
    "pg_get_constraintdef": "text",
    "pg_get_userbyid": "name",
    "pg_table_is_visible": "bool",
    "pg_type_is_visible": "bool",
    "pg_encoding_to_char": "name",
    "obj_description": "text",
    "col_description": "text",
    "lower": "text",
    "upper": "text",
    "concat": "text",
    "replace": "text",
    "substring": "text",
    "substr": "text",
    "trim": "text",
    "btrim": "text",
    "ltrim": "text",
    "rtrim": "text",
    "md5": "text",
    "repeat": "text",
    "string_agg": "text",
    "length": "int4",
    "char_length": "int4",
    "octet_length": "int4",
    "position": "int4",
    "strpos": "int4",
    "abs": "arg",
    "min": "arg",
    "max": "arg",
    "coalesce": "arg",
    "nullif": "arg",
    "greatest": "arg",
    "least": "arg",
    "round": "numeric",
    "random": "float8",
    "json_build_object": "json",
    "jsonb_build_object": "jsonb",
    "json_build_array": "json",
    "jsonb_build_array": "jsonb",
    "json_agg": "json",
    "jsonb_agg": "jsonb",
    "to_json": "json",
    "to_jsonb": "jsonb",
    "generate_series": "int4",
}


def canonical_of(data_type: exp.DataType) -> str:
    """The canonical PostgreSQL name (borealis/pgwire/types.py) of a cast target."""
    text = data_type.sql("postgres")
    if data_type.this == exp.DType.USERDEFINED or not text:
        text = str(data_type.args.get("kind") or text)
    lowered = text.lower()
    if lowered in ("regclass", "regtype", "regproc", "oid", "name"):
        return lowered
    return pg_type_of_declared(text)


class Scope:
    """The tables a query reads, by alias, with their columns' types."""

    def __init__(self, schema: Schema, tables: dict[str, tuple[tuple[str, str], ...]]) -> None:
        self.schema = schema
        self.tables = tables

    @classmethod
    def of(cls, schema: Schema, query: exp.Expression) -> Scope:
        tables: dict[str, tuple[tuple[str, str], ...]] = {}
        for table in _tables_of(query):
            if isinstance(table.this, exp.ExplodingGenerateSeries):
                alias = table.args.get("alias")
                name = alias.name if alias is not None and alias.name else "generate_series"
                column = alias.columns[0].name if alias is not None and alias.columns else name
                tables[name] = ((column, "int4"),)
                continue
            columns = schema.columns_of(table.name)
            if columns is not None:
                tables[table.alias_or_name] = columns
        return cls(schema, tables)

    def column(self, name: str, table: str) -> str:
        candidates = [self.tables[table]] if table in self.tables else []
        if not table:
            candidates = list(self.tables.values())
        for columns in candidates:
            for column_name, type_name in columns:
                if column_name == name:
                    return type_name
        return UNKNOWN

    def star(self, table: str) -> list[tuple[str, str]]:
        if table:
            return list(self.tables.get(table, ()))
        return [column for columns in self.tables.values() for column in columns]


def _tables_of(query: exp.Expression) -> list[exp.Table]:
    """Tables of the query's own FROM / JOIN / DML target, not those of subqueries."""
    found: list[exp.Table] = []
    target = query.this if isinstance(query, (exp.Update, exp.Delete, exp.Insert)) else None
    if isinstance(target, exp.Schema):
        target = target.this
    if isinstance(target, exp.Table):
        found.append(target)
    sources: list[exp.Expression] = []
    from_clause = query.args.get("from_") or query.args.get("from")
    if from_clause is not None:
        sources.append(from_clause.this)
        sources.extend(from_clause.expressions or [])
    sources.extend(join.this for join in query.args.get("joins") or [])
    found.extend(source for source in sources if isinstance(source, exp.Table))
    return found


def literal_type(node: exp.Literal) -> str:
    if node.is_string:
        return "text"
    text = node.this
    if any(character in text for character in ".eE"):
        return "numeric"
    value = int(text)
    if value <= _INT4_MAX:
        return "int4"
    return "int8" if value <= _INT8_MAX else "numeric"


def _wider(left: str, right: str) -> str:
    if left == UNKNOWN:
        return right
    if right == UNKNOWN:
        return left
    if left in _WIDTH and right in _WIDTH:
        widest = max(_WIDTH[left], _WIDTH[right])
        return "int4" if widest == 0 else next(k for k, v in _WIDTH.items() if v == widest)
    return left


def _aggregate_type(node: exp.Expression, argument: str) -> str:
    if isinstance(node, exp.Sum):
        if argument in ("int2", "int4"):
            return "int8"
        return "float8" if argument in ("float4", "float8") else "numeric"
    if argument in ("float4", "float8"):
        return "float8"
    return "numeric"


def type_of(node: exp.Expression, scope: Scope) -> str:
    """The PostgreSQL type of an expression, or "unknown"."""
    if isinstance(node, (exp.Alias, exp.Paren)):
        return type_of(node.this, scope)
    if isinstance(node, exp.Column):
        return scope.column(node.name, node.table)
    if isinstance(node, exp.Cast):
        return canonical_of(node.to)
    if isinstance(node, exp.Literal):
        return literal_type(node)
    if isinstance(node, exp.Boolean):
        return "bool"
    if isinstance(node, exp.Null):
        return "text"
    if isinstance(node, exp.Count):
        return "int8"
    if isinstance(node, (exp.Sum, exp.Avg)):
        return _aggregate_type(node, type_of(node.this, scope))
    if isinstance(node, (exp.Predicate, exp.Not, exp.And, exp.Or, exp.Exists, exp.Is)):
        return "bool"
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
        return _wider(type_of(node.this, scope), type_of(node.expression, scope))
    if isinstance(node, exp.Neg):
        return type_of(node.this, scope)
    if isinstance(node, exp.Extract):
        return "numeric"
    if isinstance(node, (exp.DPipe, exp.GroupConcat, exp.JSONExtractScalar, exp.RawString)):
        return "text"
    if isinstance(node, exp.ByteString):
        return "text"
    if isinstance(node, (exp.CurrentTimestamp, exp.CurrentTime, exp.Localtimestamp)):
        return "timestamptz"
    if isinstance(node, exp.CurrentDate):
        return "date"
    if isinstance(node, exp.Case):
        for branch in node.args.get("ifs") or []:
            found = type_of(branch.args["true"], scope)
            if found != UNKNOWN:
                return found
        default = node.args.get("default")
        return type_of(default, scope) if default is not None else UNKNOWN
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
        inner = node.this
        return type_of(inner.expressions[0], Scope.of(scope.schema, inner))
    if isinstance(node, exp.Func):
        return _function_type(node, scope)
    return UNKNOWN


def _function_type(node: exp.Func, scope: Scope) -> str:
    name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
    found = FUNCTION_TYPES.get(name, UNKNOWN)
    if found == "arg":
        arguments = [node.this, *node.expressions] if node.this is not None else node.expressions
        for argument in arguments:
            if isinstance(argument, exp.Expression):
                typed = type_of(argument, scope)
                if typed != UNKNOWN:
                    return typed
        return UNKNOWN
    return found


def output_name(node: exp.Expression) -> str:
    """The column name PostgreSQL gives a select-list item."""
    if isinstance(node, exp.Alias):
        return node.alias
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Cast):
        inner = output_name(node.this) if not isinstance(node.this, exp.Cast) else "?column?"
        return inner if inner != "?column?" else canonical_of(node.to)
    if isinstance(node, exp.Paren):
        return output_name(node.this)
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime)):
        return node.sql_name().lower()
    if isinstance(node, exp.CurrentVersion):
        return "version"
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Exists):
        return "exists"
    if isinstance(node, exp.Extract):
        return "extract"
    if isinstance(node, exp.Func) and not isinstance(node, exp.Binary):
        return _function_name(node)
    return "?column?"


def _function_name(node: exp.Func) -> str:
    names = {
        exp.Count: "count",
        exp.Sum: "sum",
        exp.Avg: "avg",
        exp.Min: "min",
        exp.Max: "max",
        exp.GroupConcat: "string_agg",
        exp.Coalesce: "coalesce",
        exp.Lower: "lower",
        exp.Upper: "upper",
        exp.Length: "length",
    }
    for kind, name in names.items():
        if isinstance(node, kind):
            return name
    return node.sql_name().lower()


def columns_of_select(
    select: exp.Expression, schema: Schema
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names, types) of a query's result columns, with `*` and `t.*` expanded."""
    if isinstance(select, exp.SetOperation):
        return columns_of_select(select.this, schema)
    if not isinstance(select, exp.Select):
        return (), ()
    scope = Scope.of(schema, select)
    names: list[str] = []
    types: list[str] = []
    for item in select.expressions:
        star = item if isinstance(item, exp.Star) else None
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            star = item.this
        if star is not None:
            table = item.table if isinstance(item, exp.Column) else ""
            for name, type_name in scope.star(table):
                names.append(name)
                types.append(type_name)
            continue
        names.append(output_name(item))
        types.append(type_of(item, scope))
    return tuple(names), tuple(types)


def returning_columns(
    statement: exp.Expression, schema: Schema
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    returning = statement.args.get("returning")
    if returning is None:
        return (), ()
    select = exp.Select(expressions=list(returning.expressions))
    scope = Scope.of(schema, statement)
    names: list[str] = []
    types: list[str] = []
    for item in select.expressions:
        if isinstance(item, exp.Star):
            for name, type_name in scope.star(""):
                names.append(name)
                types.append(type_name)
            continue
        names.append(output_name(item))
        types.append(type_of(item, scope))
    return tuple(names), tuple(types)


def _enclosing_query(node: exp.Expression) -> exp.Expression | None:
    parent = node.parent
    while parent is not None and not isinstance(
        parent, (exp.Select, exp.Update, exp.Delete, exp.Insert)
    ):
        parent = parent.parent
    return parent


def _insert_column_type(node: exp.Expression, insert: exp.Insert, schema: Schema) -> str:
    """The type of the INSERT target column a VALUES item fills."""
    row = node.parent
    while row is not None and not isinstance(row, exp.Tuple):
        if not isinstance(row, (exp.Paren, exp.Neg)):
            return UNKNOWN
        node, row = row, row.parent
    if row is None or not isinstance(row.parent, exp.Values):
        return UNKNOWN
    position = row.expressions.index(node)
    target = insert.this
    table = target.this if isinstance(target, exp.Schema) else target
    columns = schema.columns_of(table.name) if isinstance(table, exp.Table) else None
    if columns is None:
        return UNKNOWN
    types = dict(columns)
    if isinstance(target, exp.Schema) and target.expressions:
        names = [identifier.name for identifier in target.expressions]
        return types.get(names[position], UNKNOWN) if position < len(names) else UNKNOWN
    return columns[position][1] if position < len(columns) else UNKNOWN


def _parameter_type(node: exp.Expression, schema: Schema) -> str:
    parent = node.parent
    while isinstance(parent, (exp.Paren, exp.Neg)):
        node, parent = parent, parent.parent
    if isinstance(parent, exp.Cast):
        return canonical_of(parent.to)
    if isinstance(parent, (exp.Limit, exp.Offset, exp.Fetch)):
        return "int8"
    query = _enclosing_query(node)
    if isinstance(query, exp.Insert) and isinstance(parent, exp.Tuple):
        return _insert_column_type(node, query, schema)
    scope = Scope.of(schema, query) if query is not None else Scope(schema, {})
    if isinstance(parent, (exp.Like, exp.ILike)):
        return "text"
    if isinstance(parent, exp.Binary):
        other = parent.expression if parent.this is node else parent.this
        return type_of(other, scope)
    if isinstance(parent, exp.In) and parent.this is not node:
        return type_of(parent.this, scope)
    if isinstance(parent, exp.Between):
        return type_of(parent.this, scope)
    return UNKNOWN


def parameter_types(statement: exp.Expression, schema: Schema, count: int) -> tuple[str, ...]:
    """The type of $1..$count: the first inference wins for a parameter used twice."""
    found: dict[int, str] = {}
    for node in statement.find_all(exp.Parameter):
        number = int(node.this.this) if isinstance(node.this, exp.Literal) else 0
        if 0 < number <= count and found.get(number, UNKNOWN) == UNKNOWN:
            found[number] = _parameter_type(node, schema)
    return tuple(found.get(number, UNKNOWN) for number in range(1, count + 1))
