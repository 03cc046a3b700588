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
    """Follows typed messages across chunks. `feed(chunk)` returns an event per
    message of a kind in `report`, in order: (kind, body) for the kinds also in
    `capture` once the whole message has arrived, (kind, None) for the others as
    soon as their header has. `last_kind` is the kind of the last header seen,
    reported or not."""

    __slots__ = (
        "_report",
        "_capture",
        "_body_bytes_max",
        "_partial",
        "_skip",
        "_kind",
        "_body",
        "_missing",
        "last_kind",
    )

    def __init__(
        self, report: frozenset[int], capture: frozenset[int], body_bytes_max: int
    ) -> None:
        assert body_bytes_max > 0 and capture <= report
        self._report = report
        self._capture = capture
        self._body_bytes_max = body_bytes_max
        self._partial = b""
        self._skip = 0
        self._kind = 0
        self._body: bytearray | None = None
        self._missing = 0
        self.last_kind = 0

    @property
    def mid_message(self) -> bool:
        """Whether the stream so far ends inside a message."""
        return bool(self._partial or self._skip or self._body is not None)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._partial:
            data, self._partial = self._partial + data, b""
        size = len(data)
        position = self._resume(data, events)
        # The hot loop: one header per iteration, locals only (it runs per message).
        report, capture, unpack = self._report, self._capture, _INT32.unpack_from
        kind = self.last_kind
        while position + _HEADER_BYTES <= size:
            kind = data[position]
            length = unpack(data, position + 1)[0]
            if length < 4:
                raise m.ProtocolViolation(f"invalid message length {length}")
            start = position + _HEADER_BYTES
            position = start + length - 4
            if kind not in report:
                continue
            if kind not in capture:
                events.append((kind, None))
            elif length - 4 > self._body_bytes_max:
                raise m.ProtocolViolation(f"message of {length} bytes exceeds the limit")
            elif position <= size:
                events.append((kind, data[start:position]))
            else:
                self._kind = kind
                self._body = bytearray(data[start:])
                self._missing = position - size
        self.last_kind = kind
        if position > size and self._body is None:
            self._skip = position - size
        elif position < size:
            self._partial = data[position:]
        return events

    def _resume(self, data: bytes, events: list[Event]) -> int:
        """Finishes the message the previous chunk ended inside; where the next starts."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            return taken
        if self._body is None:
            return 0
        taken = min(self._missing, len(data))
        self._body += data[:taken]
        self._missing -= taken
        if self._missing == 0:
            events.append((self._kind, bytes(self._body)))
            self._body = None
        return taken


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
