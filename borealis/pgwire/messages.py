"""PostgreSQL protocol v3 framing, sans-IO: a parser fed bytes that yields frontend
messages, and builders of backend messages.

The parser validates strictly: a bad length, a missing NUL terminator, an unknown
message type or a count that does not match its data raises ProtocolViolation
(SQLSTATE 08P01), after which the connection is closed. A Query or Parse longer
than `query_bytes_max` is not an error of the connection: the parser yields
`Oversized` and discards the body as it arrives, without buffering it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from borealis.errors import SqlError
from borealis.pgwire.backend import Column
from borealis.pgwire.types import BY_OID

PROTOCOL_VERSION_3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
# PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
STARTUP_BYTES_MAX = 10000
# Bounds on counts inside one message, beyond what the length allows anyway.
PARAMETERS_MAX = 65535

_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_TWO_INT32 = struct.Struct("!ii")
_NULL_LENGTH = b"\xff\xff\xff\xff"


class ProtocolViolation(SqlError):
    """The client broke the protocol's framing: the connection cannot continue."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, "08P01", **context)


# --- frontend messages ---


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class Query:
    sql: bytes


@dataclass(frozen=True, slots=True)
class Parse:
    name: bytes
    sql: bytes
    parameter_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    portal: bytes
    statement: bytes
    parameter_formats: tuple[int, ...]
    parameters: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    kind: bytes
    """b"S" (statement) or b"P" (portal)."""
    name: bytes


@dataclass(frozen=True, slots=True)
class Execute:
    portal: bytes
    row_limit: int


@dataclass(frozen=True, slots=True)
class Close:
    kind: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on
    the authentication state, so the body is parsed by the caller."""

    body: bytes


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    pass


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A Query (b"Q") or Parse (b"P") longer than query_bytes_max; its body is skipped."""

    kind: bytes
    length_bytes: int


FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Flush
    | Sync
    | Terminate
    | PasswordMessage
    | CopyData
    | CopyDone
    | CopyFail
    | Oversized
)

_FLUSH = Flush()
_SYNC = Sync()
_TERMINATE = Terminate()
_COPY_DONE = CopyDone()


class _Body:
    """A cursor over one message's body that refuses to read past its end."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def string(self) -> bytes:
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise ProtocolViolation("invalid string in message: missing NUL terminator")
        value = self.data[self.offset : end]
        self.offset = end + 1
        return value

    def int16(self) -> int:
        return self._unpack(_INT16)

    def uint16(self) -> int:
        return self._unpack(_UINT16)

    def int32(self) -> int:
        return self._unpack(_INT32)

    def _unpack(self, layout: struct.Struct) -> int:
        if self.offset + layout.size > len(self.data):
            raise ProtocolViolation("insufficient data left in message")
        value = int(layout.unpack_from(self.data, self.offset)[0])
        self.offset += layout.size
        return value

    def take(self, length: int) -> bytes:
        if length < 0 or self.offset + length > len(self.data):
            raise ProtocolViolation("insufficient data left in message")
        value = self.data[self.offset : self.offset + length]
        self.offset += length
        return value

    def end(self) -> None:
        if self.offset != len(self.data):
            raise ProtocolViolation("invalid message format: trailing bytes")


def parse_startup(body: bytes) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """An untyped startup-phase packet (without its length word)."""
    cursor = _Body(body)
    code = cursor.int32()
    if code == SSL_REQUEST_CODE:
        cursor.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        cursor.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        process_id, secret_key = cursor.int32(), cursor.int32()
        cursor.end()
        return CancelRequest(process_id, secret_key)
    return StartupMessage(code, _startup_parameters(cursor) if code >> 16 == 3 else {})


def _startup_parameters(cursor: _Body) -> dict[str, str]:
    parameters: dict[str, str] = {}
    while True:
        name = cursor.string()
        if not name:
            break
        value = cursor.string()
        try:
            parameters[name.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid byte sequence in startup packet") from None
    cursor.end()
    return parameters


def _parse_query(body: bytes) -> Query:
    cursor = _Body(body)
    sql = cursor.string()
    cursor.end()
    return Query(sql)


def _parse_parse(body: bytes) -> Parse:
    cursor = _Body(body)
    name, sql = cursor.string(), cursor.string()
    count = cursor.int16()
    if count < 0:
        raise ProtocolViolation("invalid parameter type count")
    oids = tuple(cursor.int32() & 0xFFFFFFFF for _ in range(count))
    cursor.end()
    return Parse(name, sql, oids)


def _format_codes(cursor: _Body) -> tuple[int, ...]:
    count = cursor.int16()
    if count < 0:
        raise ProtocolViolation("invalid format code count")
    codes = tuple(cursor.int16() for _ in range(count))
    if any(code not in (0, 1) for code in codes):
        raise ProtocolViolation("unsupported format code")
    return codes


def _parse_bind(body: bytes) -> Bind:
    cursor = _Body(body)
    portal, statement = cursor.string(), cursor.string()
    parameter_formats = _format_codes(cursor)
    count = cursor.int16()
    if count < 0:
        raise ProtocolViolation("invalid parameter count")
    parameters: list[bytes | None] = []
    for _ in range(count):
        length = cursor.int32()
        parameters.append(None if length == -1 else cursor.take(length))
    result_formats = _format_codes(cursor)
    cursor.end()
    return Bind(portal, statement, parameter_formats, tuple(parameters), result_formats)


def _parse_describe_or_close(body: bytes, make: type[Describe] | type[Close]) -> Describe | Close:
    cursor = _Body(body)
    kind = cursor.take(1)
    if kind not in (b"S", b"P"):
        raise ProtocolViolation(f"invalid {make.__name__} message subtype {kind!r}")
    name = cursor.string()
    cursor.end()
    return make(kind, name)


def _parse_execute(body: bytes) -> Execute:
    cursor = _Body(body)
    portal = cursor.string()
    row_limit = cursor.int32()
    cursor.end()
    return Execute(portal, max(row_limit, 0))


def _parse_copy_fail(body: bytes) -> CopyFail:
    cursor = _Body(body)
    message = cursor.string()
    cursor.end()
    return CopyFail(message)


def _empty(message: Flush | Sync | Terminate | CopyDone) -> Callable[[bytes], FrontendMessage]:
    def parse(body: bytes) -> FrontendMessage:
        if body:
            raise ProtocolViolation("invalid message format: unexpected body")
        return message

    return parse


_TYPED_PARSERS: dict[bytes, Callable[[bytes], FrontendMessage]] = {
    b"Q": _parse_query,
    b"P": _parse_parse,
    b"B": _parse_bind,
    b"D": lambda body: _parse_describe_or_close(body, Describe),
    b"C": lambda body: _parse_describe_or_close(body, Close),
    b"E": _parse_execute,
    b"H": _empty(_FLUSH),
    b"S": _empty(_SYNC),
    b"X": _empty(_TERMINATE),
    b"p": PasswordMessage,
    b"d": CopyData,
    b"c": _empty(_COPY_DONE),
    b"f": _parse_copy_fail,
}


class FrontendParser:
    """Bytes in, frontend messages out.

    Starts in the startup phase (untyped packets); a StartupMessage moves it to
    typed messages. Feed with `feed`, take messages with `next` until None.
    """

    def __init__(self, message_bytes_max: int, query_bytes_max: int) -> None:
        assert query_bytes_max > 0 and message_bytes_max > 0
        self._buffer = bytearray()
        self._offset = 0
        self._skip_bytes = 0
        self.startup_phase = True
        self._message_bytes_max = message_bytes_max
        self._query_bytes_max = query_bytes_max

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        if self._skip_bytes:
            skipped = min(self._skip_bytes, len(data))
            self._skip_bytes -= skipped
            data = data[skipped:]
        self._buffer += data

    def next(self) -> FrontendMessage | None:
        if self._skip_bytes:
            return None
        message = self._next_startup() if self.startup_phase else self._next_typed()
        if self._offset > 65536 and self._offset * 2 > len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0
        return message

    def _next_startup(self) -> FrontendMessage | None:
        available = len(self._buffer) - self._offset
        if available < 4:
            return None
        length = _INT32.unpack_from(self._buffer, self._offset)[0]
        if not 8 <= length <= STARTUP_BYTES_MAX:
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if available < length:
            return None
        body = bytes(self._buffer[self._offset + 4 : self._offset + length])
        self._offset += length
        message = parse_startup(body)
        if isinstance(message, StartupMessage):
            self.startup_phase = False
        return message

    def _next_typed(self) -> FrontendMessage | None:
        available = len(self._buffer) - self._offset
        if available < 5:
            return None
        kind, length = _HEADER.unpack_from(self._buffer, self._offset)
        parse = _TYPED_PARSERS.get(kind)
        if parse is None:
            raise ProtocolViolation(f"invalid frontend message type {kind[0]}")
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        if kind in (b"Q", b"P") and length - 4 > self._query_bytes_max:
            return self._oversized(kind, length)
        if length - 4 > self._message_bytes_max:
            raise ProtocolViolation(f"message of {length} bytes exceeds the limit")
        if available < 1 + length:
            return None
        start = self._offset + 5
        body = bytes(self._buffer[start : self._offset + 1 + length])
        self._offset += 1 + length
        return parse(body)

    def _oversized(self, kind: bytes, length: int) -> Oversized:
        body_bytes = length - 4
        buffered = len(self._buffer) - self._offset - 5
        if buffered >= body_bytes:
            self._offset += 5 + body_bytes
        else:
            self._skip_bytes = body_bytes - buffered
            del self._buffer[:]
            self._offset = 0
        return Oversized(kind, body_bytes)


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse: the mechanism chosen and the client-first message."""
    cursor = _Body(body)
    mechanism = cursor.string().decode("ascii", "replace")
    length = cursor.int32()
    data = b"" if length == -1 else cursor.take(length)
    cursor.end()
    return mechanism, data


# --- backend messages ---


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


AUTHENTICATION_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
PORTAL_SUSPENDED = b"s\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE = b"I\x00\x00\x00\x04"
COPY_DONE = b"c\x00\x00\x00\x04"
_READY = {status: b"Z\x00\x00\x00\x05" + status for status in (b"I", b"T", b"E")}


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    names = b"".join(_cstring(name) for name in mechanisms) + b"\x00"
    return _message(b"R", _INT32.pack(10) + names)


def authentication_sasl_continue(data: bytes) -> bytes:
    return _message(b"R", _INT32.pack(11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _message(b"R", _INT32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstring(name) + _cstring(value))


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return _message(b"K", _TWO_INT32.pack(process_id, secret_key))


def negotiate_protocol_version(minor_supported: int, unrecognized: Sequence[str]) -> bytes:
    names = b"".join(_cstring(name) for name in unrecognized)
    return _message(b"v", _TWO_INT32.pack(minor_supported, len(unrecognized)) + names)


def ready_for_query(status: bytes) -> bytes:
    return _READY[status]


def row_description(columns: Sequence[Column], formats: Sequence[int]) -> bytes:
    assert len(columns) == len(formats)
    parts = [_INT16.pack(len(columns))]
    for column, format_code in zip(columns, formats, strict=True):
        parts.append(_cstring(column.name))
        parts.append(
            struct.pack(
                "!iHIhih",
                column.table_oid,
                column.column_number,
                column.type_oid,
                _type_size(column.type_oid),
                -1,
                format_code,
            )
        )
    return _message(b"T", b"".join(parts))


def _type_size(oid: int) -> int:
    found = BY_OID.get(oid)
    return found.length if found is not None else -1


def parameter_description(oids: Sequence[int]) -> bytes:
    return _message(b"t", _INT16.pack(len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def command_complete(tag: str) -> bytes:
    return _message(b"C", _cstring(tag))


def copy_in_response(binary: bool, column_count: int) -> bytes:
    return _copy_response(b"G", binary, column_count)


def copy_out_response(binary: bool, column_count: int) -> bytes:
    return _copy_response(b"H", binary, column_count)


def _copy_response(kind: bytes, binary: bool, column_count: int) -> bytes:
    code = 1 if binary else 0
    body = struct.pack("!bh", code, column_count) + _INT16.pack(code) * column_count
    return _message(kind, body)


def copy_data(data: bytes) -> bytes:
    return b"d" + _INT32.pack(len(data) + 4) + data


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
    notice: bool = False,
) -> bytes:
    """ErrorResponse (or NoticeResponse) with the S/V/C/M/D/H/P fields."""
    fields = [b"S" + _cstring(severity), b"V" + _cstring(severity), b"C" + _cstring(sqlstate)]
    fields.append(b"M" + _cstring(message))
    if detail:
        fields.append(b"D" + _cstring(detail))
    if hint:
        fields.append(b"H" + _cstring(hint))
    if position is not None:
        fields.append(b"P" + _cstring(str(position)))
    return _message(b"N" if notice else b"E", b"".join(fields) + b"\x00")


class DataRowBuilder:
    """Builds DataRow messages for one result: the per-column encoders are chosen
    once (by the column types and result formats), so each row is a tight loop."""

    __slots__ = ("_encoders", "_count_bytes", "_width")

    def __init__(self, encoders: Sequence[Callable[[Any], bytes]]) -> None:
        self._encoders = tuple(encoders)
        self._width = len(self._encoders)
        self._count_bytes = _INT16.pack(self._width)

    def build(self, row: Sequence[Any]) -> bytes:
        if len(row) != self._width:
            raise SqlError(f"row has {len(row)} values for {self._width} columns", "XX000")
        parts = [self._count_bytes]
        append = parts.append
        pack = _INT32.pack
        for encode, value in zip(self._encoders, row):  # noqa: B905 - lengths checked
            if value is None:
                append(_NULL_LENGTH)
            else:
                encoded = encode(value)
                append(pack(len(encoded)))
                append(encoded)
        body = b"".join(parts)
        return b"D" + pack(len(body) + 4) + body
