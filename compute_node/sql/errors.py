"""SQLite's errors as PostgreSQL reports them: SQLSTATE and message.

The engine hands SQLite's refusals over as StatementError carrying the apsw
exception; clients branch on the SQLSTATE (psycopg's UniqueViolation is 23505), so
each kind PostgreSQL users rely on gets its own code, and the message is
PostgreSQL's wording where SQLite's message carries what it needs.
"""

from __future__ import annotations

import re

from borealis.errors import SqlError
from compute_node.engine.sessions import StatementError

# SQLite extended result codes (sqlite3.h).
_CONSTRAINT_CHECK = 275
_CONSTRAINT_FOREIGNKEY = 787
_CONSTRAINT_NOTNULL = 1299
_CONSTRAINT_PRIMARYKEY = 1555
_CONSTRAINT_UNIQUE = 2067
_TOOBIG = 18
_MISMATCH = 20
_RANGE = 25

# (pattern on SQLite's message, SQLSTATE, PostgreSQL's message built from the match)
_BY_MESSAGE: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"no such table: (?:\w+\.)?(.+)"), "42P01", 'relation "{0}" does not exist'),
    (re.compile(r"no such column: (.+)"), "42703", 'column "{0}" does not exist'),
    (re.compile(r"no such index: (.+)"), "42704", 'index "{0}" does not exist'),
    (re.compile(r"no such function: (.+)"), "42883", "function {0} does not exist"),
    (
        re.compile(r"(?:table|index|view|trigger) (\S+) already exists"),
        "42P07",
        'relation "{0}" already exists',
    ),
    (re.compile(r"duplicate column name: (.+)"), "42701", 'column "{0}" specified more than once'),
    (re.compile(r"ambiguous column name: (.+)"), "42702", 'column reference "{0}" is ambiguous'),
    (re.compile(r"(?:near .*: )?syntax error"), "42601", "syntax error: {msg}"),
    (re.compile(r"incomplete input"), "42601", "syntax error at end of input"),
    (
        re.compile(r"wrong number of arguments to function (.+)\(\)"),
        "42883",
        "function {0} does not exist",
    ),
    (re.compile(r"integer overflow"), "22003", "integer out of range"),
    (
        re.compile(r"(?:Expression tree is too large|parser stack overflow|too many terms)"),
        "54001",
        "stack depth limit exceeded",
    ),
    (re.compile(r"(?:string or blob too big|too many SQL variables)"), "54000", "{msg}"),
    (
        re.compile(r"attempt to write a readonly database"),
        "25006",
        "cannot execute the statement in a read-only transaction",
    ),
    (
        re.compile(r"(\d+) values for (\d+) columns"),
        "42601",
        "INSERT has more expressions than target columns",
    ),
    (
        re.compile(r"table (\S+) has (\d+) columns but (\d+) values were supplied"),
        "42601",
        "INSERT has more expressions than target columns",
    ),
)


def sql_error_of(error: StatementError, statement: str | None = None) -> SqlError:
    """The PostgreSQL error SQLite's refusal stands for (XX000 when unknown), with
    the position of the name it is about in `statement` when it has one."""
    mapped = _mapped(error)
    if statement is not None and mapped.position is None and mapped.sqlstate in _NAMED:
        name = _QUOTED_NAME.search(mapped.message)
        if name is not None:
            text = name[1] or name[2]
            found = re.search(rf"\b{re.escape(text)}\b", statement, re.IGNORECASE)
            if found is not None:
                mapped.position = found.start() + 1
    return mapped


# Errors about a named relation, column or function; PostgreSQL points at the name.
_NAMED = frozenset({"42P01", "42703", "42883", "42702"})
_QUOTED_NAME = re.compile(r'"([^"]+)"|function (\w+)')


def _mapped(error: StatementError) -> SqlError:
    sqlite_error = error.sqlite_error
    message = error.message
    code = getattr(sqlite_error, "extendedresult", None)
    constraint = _constraint_error(code, message)
    if constraint is not None:
        return constraint
    if code == _TOOBIG:
        return SqlError(message, "54000")
    if code in (_MISMATCH, _RANGE):
        return SqlError(message, "22023" if code == _RANGE else "42804")
    for pattern, sqlstate, template in _BY_MESSAGE:
        match = pattern.search(message)
        if match is not None:
            return SqlError(template.format(*match.groups(), msg=message), sqlstate)
    return SqlError(message, "XX000")


def _constraint_error(code: int | None, message: str) -> SqlError | None:
    # SQLite: "UNIQUE constraint failed: t.a, t.b" / "NOT NULL constraint failed: t.a"
    # / "CHECK constraint failed: name" / "FOREIGN KEY constraint failed".
    target = message.split(": ", 1)[1] if ": " in message else ""
    columns = [each.strip().rsplit(".", 1) for each in target.split(",") if each.strip()]
    table = columns[0][0] if columns and len(columns[0]) == 2 else ""
    names = [each[-1] for each in columns]
    if code in (_CONSTRAINT_UNIQUE, _CONSTRAINT_PRIMARYKEY):
        name = (
            f"{table}_pkey" if code == _CONSTRAINT_PRIMARYKEY else f"{table}_{'_'.join(names)}_key"
        )
        return SqlError(
            f'duplicate key value violates unique constraint "{name}"',
            "23505",
            detail=f"Key ({', '.join(names)}) already exists.",
        )
    if code == _CONSTRAINT_NOTNULL:
        column = names[0] if names else "?"
        return SqlError(
            f'null value in column "{column}" of relation "{table}" violates not-null constraint',
            "23502",
        )
    if code == _CONSTRAINT_FOREIGNKEY:
        return SqlError("insert or update violates a foreign key constraint", "23503")
    if code == _CONSTRAINT_CHECK:
        return SqlError(f'new row violates check constraint "{target}"', "23514")
    return None
