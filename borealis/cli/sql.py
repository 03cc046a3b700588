"""borealis sql: an interactive SQL shell on psycopg 3, in the manner of psql.

It reads the endpoint and credentials from DIR/cluster.json (`endpoints.writer`,
or `endpoints.reader` with --reader; `user`; `password_file`, a 0600 file), with
PGPASSWORD winning over the file. Three layers, so the first two can be tested
without a server:

- `split_statements`: a pure splitter of SQL text into complete statements, aware
  of quotes, dollar quotes, comments and parentheses;
- `format_aligned` / `format_expanded` / `format_error`: pure formatters of result
  tables and errors, byte for byte like psql's default aligned output;
- `Shell`: the I/O part (connection, meta-commands, the read loop).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg.adapt import Loader
from psycopg.postgres import types as postgres_types
from psycopg.pq import TransactionStatus

from borealis.errors import BorealisError, InvalidRequest, NotFound

# The same default as `borealis up` (borealis/cli/main.py); not imported from there
# because main.py imports this module.
DEFAULT_DATA_DIR = Path(".borealis")
HISTORY_FILE = ".borealis_history"
HISTORY_LINES_MAX = 2000
CONNECT_TIMEOUT_S = 10
# A query buffer larger than this is refused rather than grown without bound.
STATEMENT_CHARS_MAX = 16 * 1024 * 1024
# Rows drawn in one result table; the rest are counted but not printed.
ROWS_DISPLAY_MAX = 100_000
# libpq's error cursor display: lines wider than this are cut around the cursor.
ERROR_LINE_DISPLAY_MAX = 60
ERROR_LINE_RIGHT_MIN = 10

# psql right-aligns the numeric types (print.c column_type_alignment).
RIGHT_ALIGNED_OIDS = frozenset({20, 21, 23, 26, 28, 29, 700, 701, 790, 1700, 5069})


# --------------------------------------------------------------------------- splitter


@dataclass(frozen=True)
class Split:
    """Complete statements (without their `;`), the unfinished rest, and the prompt state.

    `state` is psql's prompt character for the rest: `=` nothing pending, `-` a
    statement continues, `'` / `"` / `$` inside a quote, `*` inside a comment, `(`
    inside parentheses.
    """

    statements: list[str]
    remainder: str
    state: str


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


def _is_identifier_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _skip_block_comment(text: str, index: int) -> int:
    """Index after the (nested, as in PostgreSQL) comment starting at `index`; -1 if open."""
    depth, index = 1, index + 2
    while depth:
        close = text.find("*/", index)
        if close < 0:
            return -1
        opened = text.find("/*", index, close)
        if opened >= 0:
            depth, index = depth + 1, opened + 2
        else:
            depth, index = depth - 1, close + 2
    return index


def _skip_string(text: str, index: int, backslash_escapes: bool) -> int:
    """Index after the '...' string starting at `index`; -1 if it is still open.

    A doubled quote needs no special case: it closes and reopens the string.
    """
    index += 1
    while index < len(text):
        char = text[index]
        if char == "\\" and backslash_escapes:
            index += 2
            continue
        if char == "'":
            return index + 1
        index += 1
    return -1


def _skip_quoted(text: str, index: int) -> tuple[int, str]:
    """(index after the quoted token at `index`, prompt state if it is open)."""
    char = text[index]
    if char == "'":
        escapes = (
            index > 0
            and text[index - 1] in "eE"
            and (index < 2 or not _is_identifier_char(text[index - 2]))
        )
        return _skip_string(text, index, escapes), "'"
    if char == '"':
        close = text.find('"', index + 1)
        return (close + 1 if close >= 0 else -1), '"'
    tag = _DOLLAR_TAG.match(text, index)
    assert tag is not None, "caller checks for a dollar tag"
    close = text.find(tag.group(0), tag.end())
    return (close + len(tag.group(0)) if close >= 0 else -1), "$"


def _dollar_quote_at(text: str, index: int) -> bool:
    if index > 0 and _is_identifier_char(text[index - 1]):
        return False  # `a$b$` is an identifier, `$1` a parameter
    return _DOLLAR_TAG.match(text, index) is not None


def split_statements(text: str) -> Split:
    """Splits SQL text at the `;` that end statements (outside quotes, comments, parens).

    Statements made only of comments and spaces are dropped, as psql does.
    """
    statements: list[str] = []
    start = index = depth = 0
    has_content = False
    while index < len(text):
        char = text[index]
        if text.startswith("--", index):
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline + 1
            continue
        if text.startswith("/*", index):
            index = _skip_block_comment(text, index)
            if index < 0:
                return Split(statements, text[start:], "*")
            continue
        if char in "'\"" or (char == "$" and _dollar_quote_at(text, index)):
            index, open_state = _skip_quoted(text, index)
            if index < 0:
                return Split(statements, text[start:], open_state)
            has_content = True
            continue
        if char == ";" and depth == 0:
            if has_content:
                statements.append(text[start:index].strip())
            start, has_content = index + 1, False
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if not char.isspace() and char != ";":
            has_content = True
        index += 1
    if not has_content:
        return Split(statements, "", "=")
    return Split(statements, text[start:], "(" if depth else "-")


# --------------------------------------------------------------------------- formatter


def display_width(text: str) -> int:
    """Terminal columns of `text`: wide East Asian characters take two, combining ones none."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
    return width


def _pad(text: str, width: int, align: str) -> str:
    gap = max(0, width - display_width(text))
    if align == "r":
        return " " * gap + text
    if align == "c":
        return " " * (gap // 2) + text + " " * (gap - gap // 2)
    return text + " " * gap


def _cell_lines(value: str | None) -> list[str]:
    return (value or "").split("\n")


def _column_widths(headers: list[list[str]], cells: list[list[list[str]]]) -> list[int]:
    widths = [max((display_width(line) for line in header), default=0) for header in headers]
    for row in cells:
        for column, lines in enumerate(row):
            widths[column] = max(widths[column], *(display_width(line) for line in lines))
    return widths


def _aligned_lines(
    cells: list[list[str]], widths: list[int], aligns: list[str], pad_last: bool
) -> list[str]:
    """The text lines of one table row whose cells may span several lines.

    A cell that continues on the next line ends with `+` where the space before
    the next `|` would be, as psql marks wrapped values.
    """
    lines = []
    height = max(len(lines_of_cell) for lines_of_cell in cells)
    last = len(cells) - 1
    for line_index in range(height):
        parts = [" "]
        for column, cell in enumerate(cells):
            continues = line_index + 1 < len(cell)
            if line_index >= len(cell):
                text = "" if column == last and not pad_last else " " * widths[column]
            elif column == last and not pad_last and not continues and aligns[column] == "l":
                text = cell[line_index]
            else:
                text = _pad(cell[line_index], widths[column], aligns[column])
            marker = "+" if continues else (" " if column < last or pad_last else "")
            parts.append(text + marker + ("| " if column < last else ""))
        lines.append("".join(parts))
    return lines


def format_aligned(
    columns: Sequence[str], rows: Sequence[Sequence[str | None]], right_aligned: Sequence[bool]
) -> list[str]:
    """psql's aligned table (border 1): centered header, separator, rows, `(n rows)`."""
    footer = row_count_footer(len(rows))
    if not columns:
        return ["--", footer]
    headers = [_cell_lines(name) for name in columns]
    cells = [[_cell_lines(value) for value in row] for row in rows]
    widths = _column_widths(headers, cells)
    aligns = ["r" if right else "l" for right in right_aligned]
    lines = _aligned_lines(headers, widths, ["c"] * len(columns), pad_last=True)
    lines.append("+".join("-" * (width + 2) for width in widths))
    for row in cells:
        lines.extend(_aligned_lines(row, widths, aligns, pad_last=False))
    lines.append(footer)
    return lines


def _record_header(record: int, name_width: int, value_width: int) -> str:
    """`-[ RECORD n ]---+---`, a port of psql's print_aligned_vertical_line (border 1)."""
    label = f"[ RECORD {record} ]"
    parts = ["-", label]
    length = len(label) + 1
    parts.append("-" * max(0, name_width - length))
    length -= name_width
    for rule in "-+-":
        if length <= 0:
            parts.append(rule)
        length -= 1
    parts.append("-" * max(0, value_width - max(0, length)))
    return "".join(parts)


def format_expanded(columns: Sequence[str], rows: Sequence[Sequence[str | None]]) -> list[str]:
    """psql's expanded display (`\\x`): one `-[ RECORD n ]` block per row."""
    if not rows or not columns:
        return [row_count_footer(len(rows))]
    name_width = max(display_width(name) for name in columns)
    value_width = max(display_width(line) for row in rows for v in row for line in _cell_lines(v))
    lines = []
    for record, row in enumerate(rows, start=1):
        lines.append(_record_header(record, name_width, value_width))
        for name, value in zip(columns, row, strict=True):
            value_lines = _cell_lines(value)
            for index, (label, text) in enumerate(zip_longest([name], value_lines, fillvalue="")):
                continues = index + 1 < len(value_lines)
                shown = _pad(text, value_width, "l") + "+" if continues else text
                lines.append(f"{_pad(label, name_width, 'l')} | {shown}")
    return lines


def row_count_footer(count: int) -> str:
    return f"({count} row{'' if count == 1 else 's'})"


def format_error_position(statement: str, position: int) -> list[str]:
    """psql's `LINE n: ...` and a caret under character `position` (1-based) of `statement`."""
    before = statement[: max(0, position - 1)]
    line_number = before.count("\n") + 1
    line_start = before.rfind("\n") + 1
    line_end = statement.find("\n", line_start)
    line = statement[line_start : len(statement) if line_end < 0 else line_end].replace("\t", " ")
    offset = len(before) - line_start
    prefix, suffix = "", ""
    if display_width(line) > ERROR_LINE_DISPLAY_MAX:
        # Cut around the cursor as libpq does, keeping some text after it.
        end = min(len(line), max(offset + ERROR_LINE_RIGHT_MIN, ERROR_LINE_DISPLAY_MAX))
        begin = max(0, end - ERROR_LINE_DISPLAY_MAX)
        prefix = "..." if begin > 0 else ""
        suffix = "..." if end < len(line) else ""
        line, offset = line[begin:end], offset - begin
    label = f"LINE {line_number}: "
    caret = " " * (len(label) + len(prefix) + display_width(line[:offset])) + "^"
    return [f"{label}{prefix}{line}{suffix}", caret]


def format_error(
    severity: str,
    sqlstate: str | None,
    message: str,
    statement: str | None = None,
    position: int | None = None,
    detail: str | None = None,
    hint: str | None = None,
) -> list[str]:
    """`ERROR:  SQLSTATE: message`, the cursor display, then DETAIL and HINT lines."""
    code = f"{sqlstate}: " if sqlstate else ""
    lines = [f"{severity}:  {code}{message}"]
    if statement is not None and position:
        lines.extend(format_error_position(statement, position))
    if detail:
        lines.append(f"DETAIL:  {detail}")
    if hint:
        lines.append(f"HINT:  {hint}")
    return lines


def pattern_filters(pattern: str) -> tuple[str, list[str]]:
    """SQL conditions on `n.nspname` and `c.relname` for psql's `[schema.]name` pattern.

    `*` and `?` are wildcards (LIKE's `%` and `_`); a pattern without them compares
    with `=`, so a name holding `_` is matched exactly without LIKE escapes (which
    SQLite's LIKE does not have by default). Unquoted names fold to lower case.
    """
    schema, _, name = pattern.rpartition(".")
    conditions, parameters = [], []
    for column, part in (("n.nspname", schema), ("c.relname", name)):
        if not part:
            continue
        if len(part) > 1 and part.startswith('"') and part.endswith('"'):
            conditions.append(f"{column} = %s")
            parameters.append(part[1:-1])
        elif "*" in part or "?" in part:
            conditions.append(f"{column} LIKE %s")
            parameters.append(part.lower().replace("*", "%").replace("?", "_"))
        else:
            conditions.append(f"{column} = %s")
            parameters.append(part.lower())
    return "".join(f"\n  AND {condition}" for condition in conditions), parameters


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class Target:
    """Where to connect: a libpq URL, a user to log in as, and the password if known."""

    url: str
    user: str | None
    password: str | None
    note: str | None = None


def read_password_file(path: Path) -> str:
    """The first line of a password file that only its owner can read or write.

    Like libpq's ~/.pgpass rule, any permission for group or others is refused:
    the file holds the cluster's admin password.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFound("the password file does not exist", path=str(path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidRequest(
            f"the password file {path} has mode {stat.S_IMODE(mode):04o}: group or others "
            f"can access it; run `chmod 600 {path}` (or set PGPASSWORD)"
        )
    return path.read_text().split("\n", 1)[0]


def resolve_target(
    data_dir: Path, reader: bool, dsn: str | None, environ: Mapping[str, str]
) -> Target:
    """The endpoint and credentials from --dsn or DIR/cluster.json; PGPASSWORD wins."""
    password_env = environ.get("PGPASSWORD")
    if dsn:
        return Target(dsn, None, password_env)
    from deploy.local import read_cluster_file

    document = read_cluster_file(data_dir)
    endpoints: dict[str, str] = document.get("endpoints") or {}
    if not endpoints.get("writer"):
        raise NotFound("cluster.json has no endpoints.writer: is the writer instance up?")
    url, note = endpoints["writer"], None
    if reader:
        url = endpoints.get("reader") or url
        if not endpoints.get("reader"):
            note = "cluster.json names no reader endpoint; connected to the writer"
    password = password_env
    if password is None and document.get("password_file"):
        password = read_password_file(Path(data_dir) / document["password_file"])
    return Target(url, document.get("user"), password, note)


def connect(target: Target) -> Any:
    """An autocommit psycopg connection (like psql) that returns every value as its text."""
    options: dict[str, Any] = {
        "autocommit": True,
        # A shell runs each statement once: no server-side prepared statements.
        "prepare_threshold": None,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "borealis sql",
    }
    if target.user:
        options["user"] = target.user
    if target.password is not None:
        options["password"] = target.password
    connection = psycopg.connect(target.url, **options)
    _register_text_loaders(connection)
    return connection


def _register_text_loaders(connection: Any) -> None:
    """Loads every column as the server's text, so output matches psql's exactly."""
    encoding = connection.info.encoding

    class ServerText(Loader):
        def load(self, data: Any) -> str:
            return bytes(data).decode(encoding, errors="replace")

    for info in postgres_types:
        connection.adapters.register_loader(info.oid, ServerText)
        if info.array_oid:
            connection.adapters.register_loader(info.array_oid, ServerText)


# --------------------------------------------------------------------------- shell

HELP = r"""General
  \q                     quit borealis sql
  \? [commands]          show this help
  \g                     run the query buffer
  \r                     reset (clear) the query buffer

Informational
  \d [NAME]              describe table, index or sequence (or list relations)
  \dt [PATTERN]          list tables (PATTERN may use * and ?)

Formatting
  \x [on|off]            toggle expanded output
  \timing [on|off]       toggle timing of commands

Statements end at ';' (outside quotes, dollar quotes, comments and parentheses)."""

LIST_RELATIONS = """SELECT n.nspname AS "Schema", c.relname AS "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
    WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
    WHEN 'f' THEN 'foreign table' WHEN 'i' THEN 'index' END AS "Type",
  r.rolname AS "Owner"
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
WHERE c.relkind IN ({kinds})
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast'){filters}
ORDER BY 1, 2"""

FIND_RELATION = """SELECT n.nspname, c.relname, c.relkind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i'){filters}
ORDER BY n.nspname = 'pg_catalog', 1, 2"""

DESCRIBE_COLUMNS = """SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
  a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""

DESCRIBE_INDEXES = """SELECT i.relname, x.indisprimary, x.indisunique,
  pg_catalog.pg_get_indexdef(x.indexrelid)
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
ORDER BY x.indisprimary DESC, i.relname"""

RELATION_KINDS = {
    "r": "Table",
    "p": "Partitioned table",
    "v": "View",
    "m": "Materialized view",
    "S": "Sequence",
    "i": "Index",
    "f": "Foreign table",
}
_COPY_FROM_STDIN = re.compile(r"^\s*copy\b.*\bfrom\s+stdin\b", re.IGNORECASE | re.DOTALL)
_COPY_TO_STDOUT = re.compile(r"^\s*copy\b.*\bto\s+stdout\b", re.IGNORECASE | re.DOTALL)
QUIT = "quit"


class MetaCommandError(Exception):
    """A meta-command that could not do its work (bad argument, nothing found)."""


class Shell:
    """Runs statements and meta-commands on one connection and prints like psql."""

    def __init__(self, connection: Any, out: TextIO, err: TextIO) -> None:
        self.connection = connection
        self.out = out
        self.err = err
        self.expanded = False
        self.timing = False
        self.buffer = ""
        self.state = "="
        self.errors = 0
        # Where COPY FROM STDIN reads its data lines; None for end of input.
        self.read_data_line: Callable[[], str | None] = lambda: None

    # ---- input

    def feed_line(self, line: str) -> str | None:
        """Takes one input line: a meta-command, or SQL that may complete statements."""
        if self.state in "=-(" and line.lstrip().startswith("\\"):
            return self.meta(line.strip())
        if len(self.buffer) + len(line) > STATEMENT_CHARS_MAX:
            self._error_line(f"statement longer than {STATEMENT_CHARS_MAX} characters; dropped")
            self.buffer, self.state = "", "="
            return None
        split = split_statements(self.buffer + line + "\n")
        self.buffer, self.state = split.remainder, split.state
        for statement in split.statements:
            self.execute(statement)
        return None

    def finish(self) -> None:
        """At the end of input (or on \\g), runs the unterminated last statement, as psql does."""
        buffered, self.buffer, self.state = self.buffer.strip(), "", "="
        if buffered:
            self.execute(buffered)

    def run_lines(self, lines: Iterable[str]) -> int:
        """Runs a script (-f, or a pipe on stdin); 1 if any statement failed."""
        iterator = iter(lines)
        self.read_data_line = lambda: next(iterator, None)
        for line in iterator:
            if self.feed_line(line.rstrip("\n")) == QUIT:
                return 1 if self.errors else 0
        self.finish()
        return 1 if self.errors else 0

    def run_command(self, text: str) -> int:
        """-c: a meta-command, or statements run in order until the first error."""
        if text.lstrip().startswith("\\"):
            self.meta(text.strip())
            return 1 if self.errors else 0
        split = split_statements(text)
        rest = split.remainder.strip()
        for statement in [*split.statements, *([rest] if rest else [])]:
            if not self.execute(statement):
                return 1
        return 0

    def prompt(self, database: str) -> str:
        """psql's PROMPT1/PROMPT2: `db=> `, `db-> ` (or the quote), `*`/`!` in a transaction."""
        status = self.connection.info.transaction_status
        marker = {TransactionStatus.INTRANS: "*", TransactionStatus.INERROR: "!"}.get(status, "")
        return f"{database}{self.state}{marker}> "

    # ---- statements

    def execute(self, statement: str) -> bool:
        """Runs one statement and prints its result or error; False on an error."""
        started = time.perf_counter()
        try:
            with self.connection.cursor() as cursor:
                if _COPY_FROM_STDIN.match(statement) or _COPY_TO_STDOUT.match(statement):
                    self._copy(cursor, statement)
                    self._print(f"COPY {cursor.rowcount}")
                else:
                    cursor.execute(statement)
                    self._print_result(cursor)
            ok = True
        except psycopg.Error as error:
            self._print_database_error(error, statement)
            ok = False
        except KeyboardInterrupt:
            self._error_line("cancelled")
            ok = False
        if self.timing:
            self._print(f"Time: {(time.perf_counter() - started) * 1000:.3f} ms")
        return ok

    def _copy(self, cursor: Any, statement: str) -> None:
        with cursor.copy(statement) as copy:
            if _COPY_TO_STDOUT.match(statement):
                for data in copy:
                    self.out.write(bytes(data).decode(self.connection.info.encoding))
                return
            while (line := self.read_data_line()) is not None:
                if line.rstrip("\n") == "\\.":
                    break
                copy.write(line if line.endswith("\n") else line + "\n")

    def _print_result(self, cursor: Any) -> None:
        """A table for a statement that returns rows, and the command tag unless a query's."""
        status = cursor.statusmessage or ""
        if cursor.description is not None:
            self._print("\n".join([*self._result_lines(cursor), ""]))
            if status.startswith(("SELECT", "SHOW", "FETCH", "EXPLAIN", "VALUES", "TABLE")):
                return
        if status:
            self._print(status)

    def _result_lines(self, cursor: Any) -> list[str]:
        columns = [column.name for column in cursor.description]
        rows = cursor.fetchmany(ROWS_DISPLAY_MAX)
        if self.expanded:
            lines = format_expanded(columns, rows)
        else:
            right = [column.type_code in RIGHT_ALIGNED_OIDS for column in cursor.description]
            lines = format_aligned(columns, rows, right)
        if cursor.rowcount > len(rows):
            lines.append(f"(only the first {len(rows)} of {cursor.rowcount} rows shown)")
        return lines

    def _print_database_error(self, error: Any, statement: str) -> None:
        self.errors += 1
        diag = error.diag
        position = int(diag.statement_position) if diag.statement_position else None
        lines = format_error(
            diag.severity or "ERROR",
            diag.sqlstate or getattr(error, "sqlstate", None),
            diag.message_primary or str(error).strip(),
            statement,
            position,
            diag.message_detail,
            diag.message_hint,
        )
        self.err.write("\n".join(lines) + "\n")
        self.err.flush()

    # ---- meta-commands

    def meta(self, line: str) -> str | None:
        """Runs a backslash command; QUIT for \\q."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        handlers: dict[str, Callable[[str], str | None]] = {
            "q": lambda _: QUIT,
            "quit": lambda _: QUIT,
            "?": lambda _: self._print(HELP),
            "x": self._toggle_expanded,
            "timing": self._toggle_timing,
            "dt": self._list_tables,
            "d": self._describe,
            "g": lambda _: self.finish(),
            "r": self._reset_buffer,
        }
        handler = handlers.get(name)
        if handler is None:
            self._error_line(f"invalid command \\{name}\nTry \\? for help.")
            return None
        try:
            return handler(argument)
        except MetaCommandError as error:
            self._error_line(str(error))
        except psycopg.Error as error:
            # A catalog query failed: shown like a statement's error, without its text.
            self._print_database_error(error, "")
        return None

    def _reset_buffer(self, _argument: str) -> None:
        self.buffer, self.state = "", "="
        self._print("Query buffer reset (cleared).")

    def _toggle(self, current: bool, argument: str, what: str) -> bool:
        choices = {"on": True, "off": False, "": not current}
        if argument.lower() not in choices:
            raise MetaCommandError(f'unrecognized value "{argument}" for "{what}": on or off')
        return choices[argument.lower()]

    def _toggle_expanded(self, argument: str) -> None:
        self.expanded = self._toggle(self.expanded, argument, "\\x")
        self._print(f"Expanded display is {'on' if self.expanded else 'off'}.")

    def _toggle_timing(self, argument: str) -> None:
        self.timing = self._toggle(self.timing, argument, "\\timing")
        self._print(f"Timing is {'on' if self.timing else 'off'}.")

    def _query(self, sql: str, parameters: Sequence[Any]) -> tuple[list[str], list[Any]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            columns = [column.name for column in cursor.description or []]
            return columns, cursor.fetchmany(ROWS_DISPLAY_MAX)

    def _list_relations(self, kinds: str, pattern: str) -> None:
        filters, parameters = pattern_filters(pattern)
        columns, rows = self._query(LIST_RELATIONS.format(kinds=kinds, filters=filters), parameters)
        if not rows:
            found = f'any relation named "{pattern}"' if pattern else "any relations"
            raise MetaCommandError(f"Did not find {found}.")
        self._print("\n".join(self._table_lines("List of relations", columns, rows)))

    def _list_tables(self, pattern: str) -> None:
        self._list_relations("'r', 'p'", pattern)

    def _describe(self, pattern: str) -> None:
        if not pattern:
            self._list_relations("'r', 'p', 'v', 'm', 'S', 'f'", "")
            return
        filters, parameters = pattern_filters(pattern)
        _, found = self._query(FIND_RELATION.format(filters=filters), parameters)
        if not found:
            raise MetaCommandError(f'Did not find any relation named "{pattern}".')
        for namespace, relation, kind in found:
            self._describe_one(namespace, relation, kind)

    def _describe_one(self, namespace: str, relation: str, kind: str) -> None:
        _, columns = self._query(DESCRIBE_COLUMNS, [namespace, relation])
        rows = [
            (name, type_name, "not null" if _true(not_null) else "", default or "")
            for name, type_name, not_null, default in columns
        ]
        title = f'{RELATION_KINDS.get(kind, "Relation")} "{namespace}.{relation}"'
        lines = self._table_lines(title, ["Column", "Type", "Nullable", "Default"], rows)
        self._print("\n".join(lines[:-2]))  # psql shows no row count here
        _, indexes = self._query(DESCRIBE_INDEXES, [namespace, relation])
        if indexes:
            self._print("Indexes:")
            for index_name, primary, unique, definition in indexes:
                self._print(f'    "{index_name}" {_index_summary(primary, unique, definition)}')
        self._print("")

    def _table_lines(self, title: str, columns: list[str], rows: Sequence[Any]) -> list[str]:
        lines = format_aligned(columns, rows, [False] * len(columns))
        width = display_width(lines[0])
        return [_pad(title, width, "c").rstrip(), *lines, ""]

    # ---- output

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _error_line(self, text: str) -> None:
        self.errors += 1
        self.err.write(text + "\n")
        self.err.flush()


def _true(value: Any) -> bool:
    """A boolean the server sent as text (`t`/`f`)."""
    return value in (True, "t", "true", "1", 1)


def _index_summary(primary: Any, unique: Any, definition: str | None) -> str:
    """psql's index line after the name: `PRIMARY KEY, btree (id)`."""
    method = (definition or "").partition(" USING ")[2] or (definition or "")
    if _true(primary):
        return f"PRIMARY KEY, {method}"
    if _true(unique):
        return f"UNIQUE, {method}"
    return method


# --------------------------------------------------------------------------- interactive


def _setup_history() -> Callable[[], None]:
    """readline with a bounded history in ~/.borealis_history; returns the saver."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = Path.home() / HISTORY_FILE
    readline.set_history_length(HISTORY_LINES_MAX)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)

    def save() -> None:
        try:
            readline.write_history_file(path)
            path.chmod(0o600)  # statements may hold secrets
        except OSError:
            pass

    return save


def interactive(shell: Shell, database: str) -> int:
    save_history = _setup_history()
    server = shell.connection.info.parameter_status("server_version") or "?"
    print(f"borealis sql (psycopg {psycopg.__version__}, server {server})")
    print('Type "\\?" for help, "\\q" to quit.\n')
    shell.read_data_line = lambda: _read_data_line()
    try:
        while True:
            try:
                line = input(shell.prompt(database))
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                shell.buffer, shell.state = "", "="
                continue
            if shell.feed_line(line) == QUIT:
                break
    finally:
        save_history()
    return 0


def _read_data_line() -> str | None:
    try:
        return input(">> ")
    except EOFError:
        return None


# --------------------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> None:
    """Adds `sql` to the `borealis` command's subparsers."""
    parser = subparsers.add_parser("sql", help="an interactive SQL shell on the cluster")
    _add_arguments(parser)
    parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--reader", action="store_true", help="connect to the reader endpoint")
    parser.add_argument("-c", "--command", help="run one command (SQL or \\meta) and exit")
    parser.add_argument("-f", "--file", help="run the statements in FILE and exit")
    parser.add_argument("--dsn", help="a postgresql:// URL instead of cluster.json")


def run(args: argparse.Namespace) -> int:
    """The `borealis sql` command; 0 on success, 1 on an SQL error, 2 if it cannot connect."""
    try:
        target = resolve_target(Path(args.data_dir), args.reader, args.dsn, os.environ)
    except BorealisError as error:
        print(f"borealis sql: {error}", file=sys.stderr)
        return 2
    if target.note:
        print(f"borealis sql: {target.note}", file=sys.stderr)
    try:
        connection = connect(target)
    except psycopg.Error as error:
        print(f"borealis sql: cannot connect to {target.url}: {error}".strip(), file=sys.stderr)
        return 2
    connection.add_notice_handler(lambda diag: _print_notice(diag))
    with connection:
        shell = Shell(connection, sys.stdout, sys.stderr)
        if args.command is not None:
            return shell.run_command(args.command)
        if args.file is not None:
            return _run_file(shell, args.file)
        if not sys.stdin.isatty():
            return shell.run_lines(sys.stdin)
        return interactive(shell, connection.info.dbname)


def _run_file(shell: Shell, name: str) -> int:
    try:
        with open(name, encoding="utf-8") as script:
            return shell.run_lines(script)
    except OSError as error:
        print(f"borealis sql: {name}: {error.strerror}", file=sys.stderr)
        return 1


def _print_notice(diag: Any) -> None:
    print(f"{diag.severity or 'NOTICE'}:  {diag.message_primary}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m borealis.cli.sql`, the same command outside the `borealis` entry point."""
    parser = argparse.ArgumentParser(prog="borealis sql", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
