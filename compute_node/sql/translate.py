"""PostgreSQL statements translated to SQLite, with a cache of statement shapes.

`split` cuts a simple Query into statements; `translate_one` translates one;
`Translator` caches translations by statement shape (the text with its literals
taken out, compute_node/sql/lexer.py), so pgbench's `UPDATE ... WHERE aid = 1234`
with changing numbers is parsed once. The result is a frozen `Translated`:

- `sqlite`: SQLite text, or None for statements the session carries out itself
  (`action`) or that change nothing here (VACUUM, DISCARD ALL, ...). Parameters are
  numbered ?NNN: $n is ?n; then come the shape's literals, then (when `uses_now`)
  the transaction time. Build the bound values with `Translated.bindings`. A few
  parameterless statements (DROP TABLE a, b; TRUNCATE a, b; ALTER TABLE ... ADD
  PRIMARY KEY) are several SQLite statements joined with "; ".
- `command`: the CommandComplete verb; the session adds counts.
- `parameter_types`, `column_names`, `column_types`: what Describe answers.

Decisions (documented for the session and README):
- SERIAL / BIGSERIAL / identity columns must be the primary key (they become
  SQLite's INTEGER PRIMARY KEY rowid); elsewhere SqlError 0A000.
- ALTER TABLE ADD PRIMARY KEY / ADD CONSTRAINT .. PRIMARY KEY / UNIQUE become
  CREATE UNIQUE INDEX named <table>_pkey / the constraint's name (SQLite cannot
  alter constraints). ADD CONSTRAINT .. FOREIGN KEY is accepted and not enforced.
- LIKE is case-sensitive (GLOB for a literal pattern, else pg_like()); ILIKE is
  SQLite's LIKE (case-insensitive for ASCII only).
- now()/CURRENT_TIMESTAMP are the transaction's time, bound by the session.
- LISTEN / UNLISTEN / NOTIFY, CHECKPOINT, VACUUM, ANALYZE, DISCARD, DEALLOCATE
  are accepted and do nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from borealis.errors import SqlError
from compute_node.sql import lexer, utility
from compute_node.sql.ddl import translate_ddl
from compute_node.sql.infer import (
    Schema,
    columns_of_select,
    parameter_types,
    returning_columns,
)
from compute_node.sql.lexer import Literal, split
from compute_node.sql.rewrite import CATALOG_FUNCTIONS, Rewriter, unsupported

__all__ = [
    "CATALOG_FUNCTIONS",
    "Schema",
    "Translated",
    "Translator",
    "split",
    "translate_one",
]

Action = (
    utility.SetAction
    | utility.ResetAction
    | utility.ShowAction
    | utility.TransactionAction
    | utility.CopyAction
)


@dataclass(frozen=True)
class Translated:
    sqlite: str | None
    command: str
    returns_rows: bool = False
    parameter_types: tuple[str, ...] = ()
    column_names: tuple[str, ...] | None = None
    column_types: tuple[str, ...] | None = None
    action: Action | None = None
    literals: tuple[Literal, ...] = ()
    uses_now: bool = False

    def bindings(self, parameters: Sequence[Any], now: str) -> tuple[Any, ...]:
        """The values for ?1..?N: the client's parameters, this shape's literals,
        then the transaction time (text 'YYYY-MM-DD HH:MM:SS.ffffff+00:00')."""
        count = len(self.parameter_types)
        if len(parameters) < count:
            raise SqlError(
                f"bind message supplies {len(parameters)} parameters, "
                f"but prepared statement requires {count}",
                "08P01",
            )
        values = (*parameters[:count], *self.literals)
        return (*values, now) if self.uses_now else values


_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*([A-Za-z_]+)", re.DOTALL)
_NO_OPS = {
    "vacuum": "VACUUM",
    "analyze": "ANALYZE",
    "analyse": "ANALYZE",
    "checkpoint": "CHECKPOINT",
    "listen": "LISTEN",
    "unlisten": "UNLISTEN",
    "notify": "NOTIFY",
    "deallocate": "DEALLOCATE",
    "discard": "DISCARD",
    "load": "LOAD",
}
_UNSUPPORTED_FIRST = {
    "grant": "GRANT",
    "revoke": "REVOKE",
    "lock": "LOCK",
    "cluster": "CLUSTER",
    "reindex": "REINDEX",
    "prepare": "PREPARE (use the extended protocol)",
    "execute": "EXECUTE (use the extended protocol)",
    "declare": "DECLARE CURSOR",
    "fetch": "FETCH",
    "do": "DO",
    "call": "CALL",
    "security": "SECURITY LABEL",
    "import": "IMPORT FOREIGN SCHEMA",
    "refresh": "REFRESH MATERIALIZED VIEW",
    "merge": "MERGE",
}
_TRANSACTION_WORDS = (
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
)
_TRANSACTION_TAGS = {
    "begin": "BEGIN",
    "commit": "COMMIT",
    "rollback": "ROLLBACK",
    "savepoint": "SAVEPOINT",
    "release": "RELEASE",
    "rollback_to": "ROLLBACK",
}


def _first_word(sql: str) -> str:
    match = _FIRST_WORD.match(sql)
    return match.group(1).lower() if match else ""


def translate_one(sql: str, schema: Schema) -> Translated:
    """One PostgreSQL statement (no trailing semicolon needed) as SQLite."""
    try:
        return _translate(sql, schema)
    except RecursionError:
        raise SqlError("stack depth limit exceeded", "54001") from None


def _translate(sql: str, schema: Schema) -> Translated:
    first = _first_word(sql)
    if first in _NO_OPS:
        return Translated(None, _no_op_tag(first, sql))
    if first in _UNSUPPORTED_FIRST:
        raise unsupported(_UNSUPPORTED_FIRST[first])
    if first in ("set", "reset", "show", "copy") or first in _TRANSACTION_WORDS:
        return _translate_utility(first, sql, schema)
    return _translate_parsed(sql, schema)


def _no_op_tag(first: str, sql: str) -> str:
    """The tag PostgreSQL answers: DISCARD ALL, DEALLOCATE ALL, else the verb."""
    words = sql.split()
    if first == "discard" and len(words) > 1:
        return f"DISCARD {words[1].upper()}"
    if first == "deallocate" and words[-1].lower() == "all":
        return "DEALLOCATE ALL"
    return _NO_OPS[first]


def _translate_utility(first: str, sql: str, schema: Schema) -> Translated:
    found = lexer.tokens(sql)
    if first == "set":
        action = utility.parse_set(found)
        return Translated(None, "SET", action=action)
    if first == "reset":
        return Translated(None, "RESET", action=utility.parse_reset(found))
    if first == "show":
        show = utility.parse_show(found)
        name = show.name if show.name != "all" else "name"
        return Translated(None, "SHOW", True, (), (name,), ("text",), action=show)
    if first == "copy":
        return _translate_copy(found, sql, schema)
    transaction = utility.parse_transaction(found)
    return Translated(None, _TRANSACTION_TAGS[transaction.kind], action=transaction)


def _translate_copy(found: list[lexer.Token], sql: str, schema: Schema) -> Translated:
    copy = utility.parse_copy(found, sql)
    if copy.query_text is not None:
        query = translate_one(copy.query_text, schema)
        if not query.returns_rows:
            raise SqlError("COPY query must have a RETURNING clause or be a SELECT", "0A000")
        copy = dataclasses.replace(copy, query=query)
    elif copy.direction == "out":
        columns = ", ".join(f'"{name}"' for name in copy.columns) or "*"
        query = translate_one(f'SELECT {columns} FROM "{copy.table}"', schema)
        copy = dataclasses.replace(copy, query=query)
    elif schema.columns_of(copy.table or "") is None:
        raise SqlError(f'relation "{copy.table}" does not exist', "42P01")
    return Translated(None, "COPY", action=copy)


def _position_of(sql: str, error: ParseError) -> int | None:
    details = error.errors[0] if error.errors else {}
    line, column = details.get("line"), details.get("col")
    if not isinstance(line, int) or not isinstance(column, int):
        return None
    lines = sql.split("\n")
    offset = sum(len(text) + 1 for text in lines[: line - 1])
    highlight = details.get("highlight") or ""
    return max(1, offset + column - len(highlight) + 1)


# First words of the statements parse() hands to sqlglot; PostgreSQL's grammar
# fails on any other first word, at that word.
_PARSED_FIRST_WORDS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "with",
        "values",
        "table",
        "create",
        "drop",
        "alter",
        "explain",
        "comment",
        "truncate",
        "merge",
        "grant",
        "revoke",
    }
)


def parse(sql: str) -> exp.Expression:
    """The statement's PostgreSQL tree; SqlError 42601 with a position on errors."""
    first = _FIRST_WORD.match(sql)
    if first is not None and first.group(1).lower() not in _PARSED_FIRST_WORDS:
        raise SqlError(
            f'syntax error at or near "{first.group(1)}"', "42601", position=first.start(1) + 1
        )
    try:
        statements = sqlglot.parse(lexer.spaced_parameters(sql), read="postgres")
    except ParseError as error:
        message = error.errors[0].get("description") if error.errors else str(error)
        raise SqlError(
            f"syntax error: {message}", "42601", position=_position_of(sql, error)
        ) from None
    except TokenError as error:
        raise SqlError(f"syntax error: {error}", "42601") from None
    statements = [statement for statement in statements if statement is not None]
    if len(statements) != 1:
        raise SqlError("expected exactly one statement", "42601")
    statement = statements[0]
    if isinstance(statement, exp.Command):
        raise unsupported(f"{statement.name.upper()} statement")
    return statement


def _parameter_max(statement: exp.Expression) -> int:
    numbers = [
        int(node.this.this)
        for node in statement.find_all(exp.Parameter)
        if isinstance(node.this, exp.Literal)
    ]
    return max(numbers, default=0)


def _command_of(statement: exp.Expression) -> str:
    if isinstance(statement, (exp.Select, exp.SetOperation, exp.Values)):
        return "SELECT"
    for kind, tag in ((exp.Insert, "INSERT"), (exp.Update, "UPDATE"), (exp.Delete, "DELETE")):
        if isinstance(statement, kind):
            return tag
    raise unsupported(f"{type(statement).__name__.upper()} statement")


def _translate_parsed(sql: str, schema: Schema, extra_parameters: int = 0) -> Translated:
    """A parsed statement; `extra_parameters` of its highest $n are not the
    client's but stand for the shape's literals (see Translator)."""
    statement = parse(sql)
    ddl = translate_ddl(statement, schema)
    if ddl is not None:
        return Translated(ddl[0], ddl[1])
    if isinstance(statement, exp.Select) and statement.args.get("into"):
        raise unsupported("SELECT INTO")
    command = _command_of(statement)
    parameter_max = _parameter_max(statement)
    own_parameters = parameter_max - extra_parameters
    types = parameter_types(statement, schema, own_parameters)
    names, column_types = _result_columns(statement, schema)
    _check_conflict(statement)
    rewriter = Rewriter(now_index=parameter_max + 1)
    rewritten = rewriter.rewrite(statement)
    text = rewritten.sql("sqlite")
    returns_rows = names is not None
    return Translated(
        text,
        command,
        returns_rows,
        types,
        names,
        column_types,
        uses_now=rewriter.uses_now,
    )


def _result_columns(
    statement: exp.Expression, schema: Schema
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    if isinstance(statement, (exp.Select, exp.SetOperation)):
        return columns_of_select(statement, schema)
    if isinstance(statement, exp.Values):
        first = statement.expressions[0].expressions if statement.expressions else []
        return tuple(f"column{index + 1}" for index in range(len(first))), tuple(
            "unknown" for _ in first
        )
    if statement.args.get("returning") is not None:
        return returning_columns(statement, schema)
    return None, None


def _check_conflict(statement: exp.Expression) -> None:
    """ON CONFLICT ON CONSTRAINT needs the constraint's columns, which SQLite cannot
    name; INSERT .. SELECT .. ON CONFLICT needs a WHERE for SQLite's parser."""
    conflict = statement.args.get("conflict")
    if conflict is None:
        return
    if conflict.args.get("constraint") is not None:
        raise unsupported("ON CONFLICT ON CONSTRAINT (name the columns instead)")
    source = statement.args.get("expression")
    if isinstance(source, exp.Select) and source.args.get("where") is None:
        source.where(exp.true(), copy=False)


# Statement kinds whose literals may become bound parameters.
_PARAMETERISABLE = ("select", "insert", "update", "delete", "with", "values")
# Where a literal may stand as a bound parameter: its value changes no type, name
# or structure of the translation.
_SAFE_PARENTS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Mod,
    exp.In,
    exp.Between,
    exp.Tuple,
    exp.Neg,
    exp.Paren,
    exp.Limit,
    exp.Offset,
)


def _literal_parameters_safe(statement: exp.Expression, first_literal: int) -> bool:
    """Each literal-standing parameter is in a value position outside the select
    list, so binding its value gives the same result as the literal."""
    for node in statement.find_all(exp.Parameter):
        number = node.this.this if isinstance(node.this, exp.Literal) else None
        if number is None or int(number) < first_literal:
            continue
        if not isinstance(node.parent, _SAFE_PARENTS):
            return False
        if isinstance(node.parent, exp.Tuple) and not isinstance(node.parent.parent, exp.Values):
            return False
        ancestor = node.parent
        while ancestor is not None and not isinstance(ancestor, exp.Query | exp.DML):
            if ancestor.arg_key == "expressions" and isinstance(ancestor.parent, exp.Select):
                return False
            if isinstance(ancestor, (exp.Order, exp.Group, exp.Cast)):
                return False
            if isinstance(ancestor, exp.Func) and not isinstance(ancestor, exp.Binary):
                return False
            ancestor = ancestor.parent
    return True


@dataclass(frozen=True)
class _Entry:
    translated: Translated
    parameterised: bool


# Marks a shape whose literals must stay literal: its texts are cached whole.
_UNSAFE = Translated(None, "")


class Translator:
    """translate_one with an LRU cache of statement shapes, safe to share between
    sessions (one lock around the dict; translation runs outside it).

    The cache does not see schema changes: the translator clears itself after DDL
    it translates, and the session must call `invalidate()` when the schema changed
    by other means (another instance's DDL replicated to this one)."""

    def __init__(self, schema: Schema, entries_max: int = 4096) -> None:
        assert entries_max > 0
        self.schema = schema
        self.entries_max = entries_max
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def invalidate(self) -> None:
        with self._lock:
            self._entries.clear()

    def translate(self, sql: str) -> Translated:
        try:
            return self._translate(sql)
        except RecursionError:
            # Deeply nested SQL exhausts sqlglot's recursive descent (PostgreSQL's
            # own parser answers the same way).
            raise SqlError("stack depth limit exceeded", "54001") from None

    def _translate(self, sql: str) -> Translated:
        # Whole texts first: a prepared statement ($n, no literals) is a dict
        # lookup, without the literal scan.
        entry = self._get(sql)
        if entry is not None:
            return entry.translated
        shape = lexer.shape_of(sql) if _first_word(sql) in _PARAMETERISABLE else None
        unsafe_shape = False
        if shape is not None:
            entry = self._get(shape.key)
            if entry is not None and entry.parameterised:
                return dataclasses.replace(entry.translated, literals=shape.literals)
            unsafe_shape = entry is not None
        self.misses += 1
        if shape is not None and shape.literals and not unsafe_shape:
            template = self._template(shape)
            self._store(shape.key, _Entry(template or _UNSAFE, template is not None))
            if template is not None:
                return dataclasses.replace(template, literals=shape.literals)
        translated = translate_one(sql, self.schema)
        if translated.command.startswith(("CREATE", "DROP", "ALTER")):
            self.invalidate()
        else:
            self._store(sql, _Entry(translated, False))
        return translated

    def _get(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry

    def _template(self, shape: lexer.Shape) -> Translated | None:
        """The shape translated with its literals as parameters, or None when a
        literal is somewhere it must stay literal (then the text is cached whole)."""
        text = lexer.template_text(shape)
        try:
            statement = parse(text)
        except SqlError:
            return None
        first_literal = shape.parameter_max + 1
        if _parameter_max(statement) != shape.parameter_max + len(shape.literals):
            return None
        if not _literal_parameters_safe(statement, first_literal):
            return None
        try:
            return _translate_parsed(text, self.schema, extra_parameters=len(shape.literals))
        except SqlError:
            return None

    def _store(self, key: str, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.entries_max:
                self._entries.popitem(last=False)
