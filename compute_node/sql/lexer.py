"""A small PostgreSQL lexer: statement splitting and literal extraction.

sqlglot's tokenizer is pure Python and costs about as much per statement as the
whole cache hit may cost, so the hot path uses one regular expression instead. It
only has to find what matters for splitting and for the statement cache: quoted
strings (with '' escapes), E'' strings, dollar quotes, quoted identifiers, comments,
numbers, $n parameters and semicolons. Everything else passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from borealis.errors import SqlError

# Order matters: a word swallows digits inside identifiers (t1), and a prefixed
# string (E'', B'', X'', U&'') is one token so its body is never taken as a plain
# string literal.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<line_comment>--[^\n]*)
    |(?P<block_comment>/\*)
    |(?P<prefixed>(?:[eEbBxXnN]|[uU]&)'(?:[^'\\]|\\.|'')*')
    |(?P<string>'(?:[^']|'')*')
    |(?P<dollar>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$)
    |(?P<parameter>\$\d+)
    |(?P<identifier>"(?:[^"]|"")*")
    |(?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*)
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<semicolon>;)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNTERMINATED = re.compile(r"""(?:[eEbBxXnN]|[uU]&)?'|"|/\*""")
_INT64_MAX = (1 << 63) - 1
# The literal count a statement shape may carry; bounds the bound-parameter list.
LITERALS_MAX = 256

Literal = int | float | str


@dataclass(frozen=True)
class Shape:
    """A statement with its plain literals taken out.

    `key` is the text with each literal replaced by a marker; `literals` are their
    values in text order; `parameter_max` is the highest $n of the statement."""

    key: str
    literals: tuple[Literal, ...]
    parameter_max: int


def _syntax_error(sql: str, offset: int, what: str) -> SqlError:
    return SqlError(f"unterminated {what}", "42601", position=offset + 1)


def _skip_block_comment(sql: str, start: int) -> int:
    """The offset after the (nesting, as in PostgreSQL) block comment at `start`."""
    depth = 0
    index = start
    length = len(sql)
    while index < length:
        if sql.startswith("/*", index):
            depth += 1
            index += 2
        elif sql.startswith("*/", index):
            depth -= 1
            index += 2
            if depth == 0:
                return index
        else:
            index += 1
    raise _syntax_error(sql, start, "/* comment")


def _skip_dollar(sql: str, start: int, tag: str) -> int:
    end = sql.find(tag, start + len(tag))
    if end < 0:
        raise _syntax_error(sql, start, "dollar-quoted string")
    return end + len(tag)


def _check_other(sql: str, offset: int) -> None:
    """A lone quote character is an unterminated string or identifier."""
    if _UNTERMINATED.match(sql, offset):
        raise _syntax_error(sql, offset, "quoted string")


def _spans(sql: str) -> Iterator[tuple[str | None, int, int]]:
    """(kind, start, end) of each token of `sql`, a block comment or dollar-quoted
    string as one token (raising SqlError 42601 when one is unterminated)."""
    index = 0
    length = len(sql)
    while index < length:
        match = _TOKEN.match(sql, index)
        assert match is not None
        kind = match.lastgroup
        end = match.end()
        if kind == "block_comment":
            end = _skip_block_comment(sql, index)
        elif kind == "dollar":
            end = _skip_dollar(sql, index, match.group())
        yield kind, index, end
        index = end


def split(sql: str) -> list[str]:
    """The statements of a simple Query text, stripped, without their semicolons;
    comment-only and empty statements are left out. Raises SqlError 42601 with a
    1-based position for an unterminated string, identifier or comment."""
    statements: list[str] = []
    start = 0
    meaningful = False
    for kind, index, end in _spans(sql):
        if kind == "semicolon":
            if meaningful:
                statements.append(sql[start:index].strip())
            start = end
            meaningful = False
        elif kind == "other":
            _check_other(sql, index)
            meaningful = True
        elif kind not in ("space", "line_comment", "block_comment"):
            meaningful = True
    if meaningful:
        statements.append(sql[start:].strip())
    return statements


def _string_value(text: str) -> str:
    return text[1:-1].replace("''", "'")


def _number_value(text: str) -> Literal | None:
    """The value of a number token, or None if it must stay literal text (an integer
    beyond int8 is numeric in PostgreSQL and would lose digits as a float)."""
    if "." in text or "e" in text or "E" in text:
        return float(text)
    value = int(text)
    return value if value <= _INT64_MAX else None


def shape_of(sql: str) -> Shape | None:
    """The statement's shape and literals, or None when it has something the cache
    does not parameterise (dollar quotes, nested comments, too many literals)."""
    pieces: list[str] = []
    literals: list[Literal] = []
    parameter_max = 0
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind == "string":
            literals.append(_string_value(text))
            pieces.append("\x00s")
        elif kind == "number":
            value = _number_value(text)
            if value is None:
                pieces.append(text)
                continue
            literals.append(value)
            pieces.append("\x00n")
        elif kind == "parameter":
            parameter_max = max(parameter_max, int(text[1:]))
            pieces.append(text)
        elif kind in ("dollar", "block_comment"):
            return None
        elif kind == "space":
            pieces.append(" ")
        elif kind != "line_comment":
            pieces.append(text)
    if len(literals) > LITERALS_MAX:
        return None
    return Shape("".join(pieces), tuple(literals), parameter_max)


def spaced_parameters(sql: str) -> str:
    """`sql` with a space after each $n parameter outside strings and comments:
    sqlglot 30.30's tokenizer fails on `$1,$2` (a parameter right before a comma
    and another parameter) but not on `$1 ,$2`."""
    if "$" not in sql:
        return sql
    pieces: list[str] = []
    for kind, start, end in _spans(sql):
        pieces.append(sql[start:end])
        if kind == "parameter":
            pieces.append(" ")
    return "".join(pieces)


def template_text(shape: Shape) -> str:
    """The shape as PostgreSQL text with each literal replaced by a parameter
    numbered after the statement's own ($parameter_max + 1, ...)."""
    parts = shape.key.split("\x00")
    out = [parts[0]]
    number = shape.parameter_max
    for part in parts[1:]:
        number += 1
        out.append(f"${number}{part[1:]}")
    return "".join(out)


@dataclass(frozen=True)
class Token:
    kind: str
    """word, string, prefixed, identifier, number, parameter, dollar, semicolon, other."""
    text: str
    offset: int


def tokens(sql: str, limit: int = 10_000) -> list[Token]:
    """The statement's tokens without spaces and comments (at most `limit`), for the
    small hand-written parsers of utility statements (SET, COPY, BEGIN, ...)."""
    found: list[Token] = []
    index = 0
    length = len(sql)
    while index < length and len(found) < limit:
        match = _TOKEN.match(sql, index)
        assert match is not None
        kind = match.lastgroup
        assert kind is not None
        end = match.end()
        if kind == "block_comment":
            end = _skip_block_comment(sql, index)
        elif kind == "dollar":
            end = _skip_dollar(sql, index, match.group())
            found.append(Token(kind, sql[index:end], index))
        elif kind == "other":
            _check_other(sql, index)
            found.append(Token(kind, match.group(), index))
        elif kind not in ("space", "line_comment"):
            found.append(Token(kind, match.group(), index))
        index = end
    return found
