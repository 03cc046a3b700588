"""COPY text and csv formats, sans-IO.

`CopyInParser` takes CopyData chunks (a row may span chunks) and gives rows as
lists of str or None; `format_rows` turns result rows into CopyData payloads.
Every row is bounded: one longer than `row_bytes_max` is SqlError 54000.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from borealis.errors import SqlError
from borealis.pgwire import types
from borealis.pgwire.backend import CopySpec

ROW_BYTES_MAX_DEFAULT = 16 * 1024 * 1024

_TEXT_ESCAPES = {
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_TEXT_ESCAPE_PATTERN = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def _unescape_match(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "x" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8) & 0xFF)
    return _TEXT_ESCAPES.get(code, code)


def _text_field(raw: str, null: str) -> str | None:
    if raw == null:
        return None
    if "\\" not in raw:
        return raw
    return _TEXT_ESCAPE_PATTERN.sub(_unescape_match, raw)


class CopyInParser:
    """Rows of a COPY FROM STDIN in text or csv format."""

    def __init__(self, spec: CopySpec, row_bytes_max: int = ROW_BYTES_MAX_DEFAULT) -> None:
        assert spec.direction == "in"
        if len(spec.delimiter) != 1:
            raise SqlError("COPY delimiter must be a single one-byte character", "0A000")
        self._spec = spec
        self._row_bytes_max = row_bytes_max
        self._pending = bytearray()
        self._header_left = spec.header
        self._finished = False
        # A csv record may hold newlines inside quotes: its lines gather here.
        self._csv_partial = ""
        self._line_number = 0

    def feed(self, data: bytes) -> list[list[str | None]]:
        """The rows completed by this chunk."""
        self._pending += data
        end = self._pending.rfind(b"\n")
        if end < 0:
            self._check_pending()
            return []
        complete = bytes(self._pending[: end + 1])
        del self._pending[: end + 1]
        self._check_pending()
        return self._lines(self._decode(complete).split("\n")[:-1])

    def finish(self) -> list[list[str | None]]:
        """CopyDone: the last row may lack its newline; an open csv quote is an error."""
        rows = self._lines([self._decode(bytes(self._pending))]) if self._pending else []
        self._pending.clear()
        if self._csv_partial:
            raise SqlError("unterminated CSV quoted field", "22P04")
        return rows

    def _check_pending(self) -> None:
        if len(self._pending) + len(self._csv_partial) > self._row_bytes_max:
            raise SqlError(f"COPY row is longer than {self._row_bytes_max} bytes", "54000")

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SqlError('invalid byte sequence for encoding "UTF8"', "22021") from None

    def _lines(self, lines: list[str]) -> list[list[str | None]]:
        rows: list[list[str | None]] = []
        parse = self._text_row if self._spec.format == "text" else self._csv_line
        for line in lines:
            if self._finished:
                break
            self._line_number += 1
            row = parse(line)
            if row is not None:
                rows.append(row)
        return rows

    def _is_marker(self, line: str) -> bool:
        return line in ("\\.", "\\.\r")

    def _text_row(self, line: str) -> list[str | None] | None:
        if line.endswith("\r"):
            line = line[:-1]
        if self._header_left:
            self._header_left = False
            return None
        if self._is_marker(line):
            self._finished = True
            return None
        if len(line) > self._row_bytes_max:
            raise SqlError(f"COPY row is longer than {self._row_bytes_max} bytes", "54000")
        null = self._spec.null
        row = [_text_field(raw, null) for raw in line.split(self._spec.delimiter)]
        self._check_width(row)
        return row

    def _check_width(self, row: list[str | None]) -> None:
        if len(row) != self._spec.column_count:
            problem = "extra data after last expected column"
            if len(row) < self._spec.column_count:
                problem = "missing data for column"
            raise SqlError(problem, "22P04", detail=f"COPY line {self._line_number}")

    def _csv_line(self, line: str) -> list[str | None] | None:
        record = self._csv_partial + line if self._csv_partial else line
        if not self._csv_partial and self._is_marker(line):
            self._finished = True
            return None
        fields = _csv_fields(record.removesuffix("\r"), self._spec)
        if fields is None:
            # Inside a quoted field: the newline belongs to the value.
            self._csv_partial = record + "\n"
            if len(self._csv_partial) > self._row_bytes_max:
                raise SqlError(f"COPY row is longer than {self._row_bytes_max} bytes", "54000")
            return None
        self._csv_partial = ""
        if self._header_left:
            self._header_left = False
            return None
        self._check_width(fields)
        return fields


def _csv_fields(record: str, spec: CopySpec) -> list[str | None] | None:
    """A csv record's fields, or None when it ends inside a quoted field.

    An unquoted field equal to the null string is NULL; a quoted one never is."""
    fields: list[str | None] = []
    delimiter, quote, escape, null = spec.delimiter, spec.quote, spec.escape, spec.null
    index, length = 0, len(record)
    while True:
        value: list[str] = []
        quoted = False
        while index < length and record[index] != delimiter:
            char = record[index]
            if char == quote:
                quoted = True
                index += 1
                closed = False
                while index < length:
                    char = record[index]
                    if char == escape and index + 1 < length and record[index + 1] == quote:
                        value.append(quote)
                        index += 2
                    elif escape != quote and char == escape and index + 1 < length:
                        value.append(record[index + 1])
                        index += 2
                    elif char == quote:
                        index += 1
                        closed = True
                        break
                    else:
                        value.append(char)
                        index += 1
                if not closed:
                    return None
            else:
                value.append(char)
                index += 1
        text = "".join(value)
        fields.append(None if not quoted and text == null else text)
        if index >= length:
            return fields
        index += 1


def _escape_text(value: str, delimiter: str) -> str:
    if not any(char in value for char in ("\\", "\n", "\r", "\t", delimiter)):
        return value
    value = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    value = value.replace("\t", "\\t")
    if delimiter != "\t":
        value = value.replace(delimiter, "\\" + delimiter)
    return value


def _quote_csv(value: str, spec: CopySpec) -> str:
    needs_quotes = value == spec.null or any(
        char in value for char in (spec.delimiter, spec.quote, "\n", "\r")
    )
    if not needs_quotes:
        return value
    escaped = (
        value.replace(spec.escape, spec.escape + spec.escape)
        if spec.escape != spec.quote
        else value
    )
    escaped = escaped.replace(spec.quote, spec.escape + spec.quote)
    return spec.quote + escaped + spec.quote


def text_encoders(type_oids: Sequence[int]) -> list[Callable[[Any], str]]:
    """Per column: SQLite value -> the text PostgreSQL prints for that type."""
    result: list[Callable[[Any], str]] = []
    for oid in type_oids:
        encode = types.encoder(oid, types.TEXT_FORMAT)
        result.append(lambda value, encode=encode: encode(value).decode("utf-8"))
    return result


def format_rows(
    spec: CopySpec,
    type_oids: Sequence[int],
    rows: Sequence[Sequence[Any]],
    header: Sequence[str] | None = None,
) -> list[bytes]:
    """CopyData payloads for COPY TO STDOUT: one per row (the header first)."""
    encoders = text_encoders(type_oids)
    out: list[bytes] = []
    if spec.header and header is not None:
        out.append(_join_fields(spec, list(header)))
    for row in rows:
        fields = [
            None if value is None else encode(value)
            for encode, value in zip(encoders, row, strict=True)
        ]
        out.append(_join_fields(spec, fields))
    return out


def _join_fields(spec: CopySpec, fields: Sequence[str | None]) -> bytes:
    if spec.format == "text":
        parts = [spec.null if v is None else _escape_text(v, spec.delimiter) for v in fields]
    else:
        parts = [spec.null if v is None else _quote_csv(v, spec) for v in fields]
    return (spec.delimiter.join(parts) + "\n").encode("utf-8")
