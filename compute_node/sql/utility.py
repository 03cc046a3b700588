"""Session-level statements, parsed by hand: SET, RESET, SHOW, transaction control
and COPY. sqlglot parses most of these only as opaque commands, and they are simple
enough that a token walk is both shorter and exact.

Each parser takes the statement's tokens (compute_node/sql/lexer.py) and returns a
small frozen action the session carries out; none of them runs SQL on SQLite
(COPY's data moves through its `query` or table, which the session runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from borealis.errors import SqlError
from compute_node.sql.lexer import Token


@dataclass(frozen=True)
class SetAction:
    """SET [SESSION | LOCAL] name {TO | =} value; `value` None means DEFAULT."""

    name: str
    value: str | None
    local: bool = False


@dataclass(frozen=True)
class ResetAction:
    """RESET name; `name` None is RESET ALL."""

    name: str | None


@dataclass(frozen=True)
class ShowAction:
    """SHOW name; `name` "all" is SHOW ALL."""

    name: str


TransactionKind = Literal["begin", "commit", "rollback", "savepoint", "release", "rollback_to"]


@dataclass(frozen=True)
class TransactionAction:
    """BEGIN / START TRANSACTION (with its modes), COMMIT / END, ROLLBACK / ABORT,
    SAVEPOINT name, RELEASE [SAVEPOINT] name, ROLLBACK TO [SAVEPOINT] name."""

    kind: TransactionKind
    savepoint: str | None = None
    isolation: str | None = None
    """"read committed", "repeatable read", "serializable", or None."""
    read_only: bool | None = None
    chain: bool = False


@dataclass(frozen=True)
class CopyAction:
    """COPY table [(columns)] FROM STDIN / TO STDOUT, or COPY (query) TO STDOUT.

    `table` is the unqualified table name (None for a query copy); `columns` empty
    means every column in table order. For a query copy the translator fills
    `query` (a compute_node.sql.translate.Translated) after parsing."""

    direction: Literal["in", "out"]
    table: str | None
    columns: tuple[str, ...] = ()
    format: Literal["text", "csv"] = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool = False
    quote: str = '"'
    escape: str = '"'
    query_text: str | None = None
    query: object | None = None


def _unsupported(feature: str) -> SqlError:
    return SqlError(f"{feature} is not supported", "0A000")


def _syntax(message: str, token: Token | None) -> SqlError:
    return SqlError(message, "42601", position=token.offset + 1 if token else None)


def word_of(token: Token) -> str:
    """A token as a case-folded word or identifier (quoted identifiers keep case)."""
    if token.kind == "identifier":
        return token.text[1:-1].replace('""', '"')
    return token.text.lower()


def value_of(token: Token) -> str:
    """A SET / option value token as text: strings unquoted, words as written."""
    if token.kind == "string":
        return token.text[1:-1].replace("''", "'")
    if token.kind == "prefixed" and token.text[0] in "eE":
        body = token.text[2:-1].replace("''", "'")
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    return token.text


def _words(found: list[Token]) -> list[str]:
    return [word_of(token) for token in found]


def parse_set(found: list[Token]) -> SetAction | None:
    """SET ...; None for SET forms that change nothing here (SET SESSION
    CHARACTERISTICS, SET CONSTRAINTS, SET ROLE/SESSION AUTHORIZATION)."""
    rest = found[1:]
    local = False
    if rest and word_of(rest[0]) in ("session", "local"):
        local = word_of(rest[0]) == "local"
        rest = rest[1:]
    words = _words(rest)
    if not words:
        raise _syntax("syntax error at end of input", None)
    if words[0] in ("constraints", "role") or words[:2] in (
        ["characteristics", "as"],
        ["authorization", "default"],
    ):
        return None
    if words[:2] == ["time", "zone"]:
        return SetAction("timezone", _set_value(rest[2:]), local)
    if words[0] == "names":
        return SetAction("client_encoding", _set_value(rest[1:]), local)
    if words[0] == "transaction":
        return SetAction("transaction_isolation", " ".join(words[3:]) or None, True)
    if words[0] == "schema":
        return SetAction("search_path", _set_value(rest[1:]), local)
    name_tokens: list[str] = [words[0]]
    index = 1
    # Dotted custom settings: SET my.setting = 1.
    while index + 1 < len(rest) and rest[index].text == ".":
        name_tokens.append(word_of(rest[index + 1]))
        index += 2
    if index < len(rest) and (rest[index].text == "=" or word_of(rest[index]) == "to"):
        index += 1
    else:
        raise _syntax("syntax error: SET needs TO or =", rest[index] if index < len(rest) else None)
    return SetAction(".".join(name_tokens), _set_value(rest[index:]), local)


def _set_value(rest: list[Token]) -> str | None:
    if not rest:
        raise _syntax("syntax error at end of input", None)
    if len(rest) == 1 and rest[0].kind == "word" and rest[0].text.lower() == "default":
        return None
    if len(rest) == 1 and rest[0].kind == "word" and rest[0].text.lower() == "local":
        return None
    parts: list[str] = []
    current = ""
    for token in rest:
        if token.text == ",":
            parts.append(current)
            current = ""
        else:
            current += value_of(token)
    parts.append(current)
    return ", ".join(parts)


def parse_reset(found: list[Token]) -> ResetAction:
    words = _words(found[1:])
    if not words:
        raise _syntax("syntax error at end of input", None)
    if words == ["all"]:
        return ResetAction(None)
    if words[:2] == ["time", "zone"]:
        return ResetAction("timezone")
    return ResetAction("".join(words))


def parse_show(found: list[Token]) -> ShowAction:
    words = _words(found[1:])
    if not words:
        raise _syntax("syntax error at end of input", None)
    if words[:2] == ["time", "zone"]:
        return ShowAction("timezone")
    if words[:3] == ["transaction", "isolation", "level"]:
        return ShowAction("transaction_isolation")
    return ShowAction("".join(words))


def _transaction_modes(words: list[str]) -> tuple[str | None, bool | None]:
    isolation: str | None = None
    read_only: bool | None = None
    index = 0
    while index < len(words):
        if words[index : index + 2] == ["isolation", "level"]:
            level = words[index + 2 : index + 4]
            if level[:1] == ["serializable"]:
                isolation, index = "serializable", index + 3
            else:
                isolation, index = " ".join(level), index + 4
        elif words[index : index + 2] == ["read", "only"]:
            read_only, index = True, index + 2
        elif words[index : index + 2] == ["read", "write"]:
            read_only, index = False, index + 2
        elif words[index] in ("deferrable", ",", "transaction", "work"):
            index += 1
        elif words[index : index + 2] == ["not", "deferrable"]:
            index += 2
        else:
            raise _syntax(f'syntax error at or near "{words[index]}"', None)
    return isolation, read_only


def parse_transaction(found: list[Token]) -> TransactionAction:
    words = _words(found)
    first = words[0]
    if first in ("begin", "start"):
        modes = words[1:] if first == "begin" else words[2:]
        isolation, read_only = _transaction_modes(modes)
        return TransactionAction("begin", isolation=isolation, read_only=read_only)
    if first in ("commit", "end"):
        return TransactionAction("commit", chain=words[-2:] == ["and", "chain"])
    if first == "savepoint":
        if len(words) != 2:
            raise _syntax("SAVEPOINT needs a name", found[-1])
        return TransactionAction("savepoint", savepoint=words[1])
    if first == "release":
        name = [word for word in words[1:] if word != "savepoint"]
        if len(name) != 1:
            raise _syntax("RELEASE needs a savepoint name", found[-1])
        return TransactionAction("release", savepoint=name[0])
    rest = [word for word in words[1:] if word not in ("work", "transaction")]
    if rest[:1] == ["to"]:
        name = [word for word in rest[1:] if word != "savepoint"]
        if len(name) != 1:
            raise _syntax("ROLLBACK TO needs a savepoint name", found[-1])
        return TransactionAction("rollback_to", savepoint=name[0])
    if rest and rest != ["and", "no", "chain"]:
        raise _unsupported(f"ROLLBACK {' '.join(rest).upper()}")
    return TransactionAction("rollback")


_COPY_FORMATS = ("text", "csv")


def _single_character(option: str, value: str) -> str:
    if len(value) != 1:
        raise SqlError(f"COPY {option} must be a single one-byte character", "22023")
    return value


def _copy_options(tokens: list[Token]) -> dict[str, str]:
    """COPY options in the parenthesised (FORMAT csv, HEADER true) form or the old
    WITH CSV HEADER DELIMITER ',' form, as lower-case name -> value text."""
    options: dict[str, str] = {}
    items = [token for token in tokens if token.text not in ("(", ")")]
    if items and word_of(items[0]) == "with":
        items = items[1:]
    index = 0
    while index < len(items):
        name = word_of(items[index])
        index += 1
        if name == ",":
            continue
        if name in ("binary", "csv", "text") and "format" not in options:
            options["format"] = name
            continue
        if name == "as":
            continue
        has_value = index < len(items) and items[index].text != ","
        # Old-style HEADER / FREEZE take no value; the next word is an option.
        if (
            name in ("header", "freeze", "oids")
            and has_value
            and word_of(items[index]) not in ("true", "false", "on", "off", "1", "0", "match")
        ):
            has_value = False
        value = value_of(items[index]) if has_value else "true"
        index += 1 if has_value else 0
        if name in ("force", "force_quote", "force_not_null", "force_null"):
            raise _unsupported(f"COPY option {name.upper()}")
        options[name] = value
    return options


def parse_copy(found: list[Token], sql: str) -> CopyAction:
    """COPY ... FROM STDIN / TO STDOUT. A file or program source is 0A000, as are
    the binary format and options that change data (FORCE_QUOTE, ...)."""
    index = 1
    table: str | None = None
    query_text: str | None = None
    columns: list[str] = []
    if index < len(found) and found[index].text == "(":
        depth, end = 0, index
        for end in range(index, len(found)):
            depth += {"(": 1, ")": -1}.get(found[end].text, 0)
            if depth == 0:
                break
        query_text = sql[found[index].offset + 1 : found[end].offset].strip()
        index = end + 1
    else:
        parts = [word_of(found[index])]
        index += 1
        while index + 1 < len(found) and found[index].text == ".":
            parts.append(word_of(found[index + 1]))
            index += 2
        table = parts[-1]
        if index < len(found) and found[index].text == "(":
            index += 1
            while index < len(found) and found[index].text != ")":
                if found[index].text != ",":
                    columns.append(word_of(found[index]))
                index += 1
            index += 1
    if index + 1 >= len(found):
        raise _syntax("syntax error at end of input", None)
    direction_word, target = word_of(found[index]), word_of(found[index + 1])
    if (direction_word, target) == ("from", "stdin"):
        direction: Literal["in", "out"] = "in"
    elif (direction_word, target) == ("to", "stdout"):
        direction = "out"
    else:
        raise _unsupported("COPY to or from a file or program (use STDIN/STDOUT)")
    if direction == "in" and query_text is not None:
        raise _syntax("COPY (query) FROM is not possible", found[index])
    options = _copy_options(found[index + 2 :])
    return _copy_action(direction, table, tuple(columns), query_text, options)


def _copy_action(
    direction: Literal["in", "out"],
    table: str | None,
    columns: tuple[str, ...],
    query_text: str | None,
    options: dict[str, str],
) -> CopyAction:
    format_name = options.get("format", "text").lower()
    if format_name == "binary":
        raise _unsupported("COPY BINARY")
    if format_name not in _COPY_FORMATS:
        raise SqlError(f'COPY format "{format_name}" not recognized', "22023")
    csv = format_name == "csv"
    delimiter = _single_character("delimiter", options.get("delimiter", "," if csv else "\t"))
    quote = _single_character("quote", options.get("quote", '"'))
    header = options.get("header", "false").lower() in ("true", "on", "1", "match")
    return CopyAction(
        direction=direction,
        table=table,
        columns=columns,
        format="csv" if csv else "text",
        delimiter=delimiter,
        null=options.get("null", "" if csv else "\\N"),
        header=header,
        quote=quote,
        escape=_single_character("escape", options.get("escape", quote)),
        query_text=query_text,
    )
