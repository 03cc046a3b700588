"""The router's view of the PostgreSQL protocol, sans-IO: a scanner that follows
message boundaries in a relayed byte stream without copying it, and the few
messages the router builds itself.

The relay forwards each chunk of bytes as it arrives; the scanner only reads the
5-byte headers (and the whole of the few message kinds the router must look into)
so that it knows where each message starts and ends.
"""

from __future__ import annotations

import struct

from borealis.pgwire import messages as m

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_HEADER_BYTES = 5

# Message kinds (first byte) the router looks for.
QUERY = ord("Q")
SYNC = ord("S")
FUNCTION_CALL = ord("F")
TERMINATE = ord("X")
PARSE = ord("P")
CLOSE = ord("C")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
AUTHENTICATION = ord("R")
NOTICE_RESPONSE = ord("N")
NEGOTIATE_PROTOCOL_VERSION = ord("v")

Event = tuple[int, bytes | None]


class MessageScanner:
    """Follows typed messages across chunks. `feed(chunk)` returns one event per
    message, in order: (kind, body) for the kinds in `capture` once the whole
    message has arrived, (kind, None) for any other kind as soon as its header has."""

    __slots__ = ("_capture", "_body_bytes_max", "_partial", "_skip", "_kind", "_body", "_missing")

    def __init__(self, capture: frozenset[int], body_bytes_max: int) -> None:
        assert body_bytes_max > 0
        self._capture = capture
        self._body_bytes_max = body_bytes_max
        self._partial = b""
        self._skip = 0
        self._kind = 0
        self._body: bytearray | None = None
        self._missing = 0

    @property
    def mid_message(self) -> bool:
        """Whether the stream so far ends inside a message."""
        return bool(self._partial or self._skip or self._body is not None)

    def feed(self, data: bytes) -> list[Event]:
        if self._partial:
            data, self._partial = self._partial + data, b""
        events: list[Event] = []
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                taken = min(self._skip, size - position)
                self._skip -= taken
                position += taken
            elif self._body is not None:
                position = self._continue_body(data, position, events)
            elif size - position < _HEADER_BYTES:
                self._partial = data[position:]
                break
            else:
                position = self._header(data, position, events)
        return events

    def _header(self, data: bytes, position: int, events: list[Event]) -> int:
        kind_byte, length = _HEADER.unpack_from(data, position)
        kind = kind_byte[0]
        if length < 4:
            raise m.ProtocolViolation(f"invalid message length {length}")
        position += _HEADER_BYTES
        body_bytes = length - 4
        if kind not in self._capture:
            events.append((kind, None))
            self._skip = body_bytes
            return position
        if body_bytes > self._body_bytes_max:
            raise m.ProtocolViolation(f"message of {length} bytes exceeds the limit")
        end = position + body_bytes
        if end <= len(data):
            events.append((kind, data[position:end]))
            return end
        self._kind = kind
        self._body = bytearray(data[position:])
        self._missing = end - len(data)
        return len(data)

    def _continue_body(self, data: bytes, position: int, events: list[Event]) -> int:
        assert self._body is not None
        taken = min(self._missing, len(data) - position)
        self._body += data[position : position + taken]
        self._missing -= taken
        if self._missing == 0:
            events.append((self._kind, bytes(self._body)))
            self._body = None
        return position + taken


def message(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def startup_message(parameters: dict[str, str]) -> bytes:
    body = _INT32.pack(m.PROTOCOL_VERSION_3)
    for name, value in parameters.items():
        body += name.encode("utf-8") + b"\x00" + value.encode("utf-8") + b"\x00"
    body += b"\x00"
    return _INT32.pack(len(body) + 4) + body


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, process_id, secret_key)


def sync() -> bytes:
    return b"S\x00\x00\x00\x04"


def first_string(body: bytes, offset: int = 0) -> bytes:
    """The NUL-terminated string at `offset` (the rest of the body if unterminated)."""
    end = body.find(b"\x00", offset)
    return body[offset:] if end < 0 else body[offset:end]


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, by their code letter."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def is_deallocate(sql: bytes) -> bool:
    """Whether a simple Query is SQL DEALLOCATE (it drops prepared statements)."""
    return sql[:64].lstrip().lower().startswith(b"deallocate")
