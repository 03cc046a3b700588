"""The router's connection to an instance: a proxy login (the client's startup
parameters plus the proxy secret), then a byte pipe that the session relays."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import Protocol

from borealis.pgwire import messages as m
from borealis.pgwire.server import PROXY_SECRET_PARAMETER
from router import wire

_INT32 = struct.Struct("!i")
_TWO_INT32 = struct.Struct("!ii")
READ_BYTES = 256 * 1024
# Bounds on what an instance may send during the login, far above what it does.
_LOGIN_MESSAGES_MAX = 1000
_LOGIN_MESSAGE_BYTES_MAX = 64 * 1024
_READY_ONLY = frozenset({wire.READY_FOR_QUERY})


class BackendRefused(Exception):
    """The instance answered the login with an ErrorResponse (kept whole, to relay)."""

    def __init__(self, error_message: bytes) -> None:
        fields = wire.error_fields(error_message[5:])
        super().__init__(f"{fields.get('C', '')} {fields.get('M', '')}")
        self.error_message = error_message
        self.sqlstate = fields.get("C", "")


class BackendUnreachable(Exception):
    """No connection could be made to the instance, or it broke during the login."""


class RelayTarget(Protocol):
    """What a backend link reports to its session once relaying."""

    def from_backend(self, link: BackendLink, data: bytes) -> None: ...

    def backend_closed(self, link: BackendLink) -> None: ...

    def backend_writable(self, writable: bool) -> None: ...


@dataclass(eq=False)
class BackendLink(asyncio.Protocol):
    """A logged-in connection to an instance. It starts as a stream (the login and
    any statements prepared again are request/response); `relay_to` then hands its
    transport to this protocol, which passes each chunk straight to the session."""

    instance: str
    host: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    process_id: int = 0
    secret_key: int = 0
    # Each ParameterStatus message of the login, whole.
    parameter_status: list[bytes] = field(default_factory=list)
    # The scanner of what this instance sends (the stream starts at a message boundary).
    scanner: wire.MessageScanner = field(
        default_factory=lambda: wire.MessageScanner(
            _READY_ONLY, _READY_ONLY, _LOGIN_MESSAGE_BYTES_MAX
        )
    )
    closed: bool = False
    _target: RelayTarget | None = None

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self.writer.transport  # type: ignore[return-value]

    def relay_to(self, target: RelayTarget) -> None:
        assert self._target is None
        self._target = target
        self.transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        if self._target is not None and not self.closed:
            self._target.from_backend(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self._target is not None:
                self._target.backend_closed(self)

    def pause_writing(self) -> None:
        if self._target is not None:
            self._target.backend_writable(False)

    def resume_writing(self) -> None:
        if self._target is not None:
            self._target.backend_writable(True)

    def close(self) -> None:
        """Ends the login (Terminate) without reporting it to the session."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.transport.write(b"X\x00\x00\x00\x04")
        self.transport.close()


async def connect(
    instance: str,
    host: str,
    port: int,
    parameters: dict[str, str],
    proxy_secret: str,
    timeout_s: float,
) -> BackendLink:
    """A logged-in connection to the instance at host:port, ready for queries."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=READ_BYTES)
    except (OSError, TimeoutError) as error:
        raise BackendUnreachable(f"cannot connect to {instance}: {error!r}") from None
    link = BackendLink(instance, host, port, reader, writer)
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(wire.startup_message({**parameters, PROXY_SECRET_PARAMETER: proxy_secret}))
            await _login(link)
    except BackendRefused:
        writer.close()
        raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError, m.ProtocolViolation) as error:
        writer.close()
        raise BackendUnreachable(f"login to {instance} failed: {error!r}") from None
    return link


async def _login(link: BackendLink) -> None:
    for _ in range(_LOGIN_MESSAGES_MAX):
        kind, whole = await _read_message(link.reader)
        if kind == wire.READY_FOR_QUERY:
            return
        if kind == wire.ERROR_RESPONSE:
            raise BackendRefused(whole)
        if kind == wire.AUTHENTICATION:
            if _INT32.unpack_from(whole, 5)[0] != 0:
                raise m.ProtocolViolation("the instance asked for a password from the router")
        elif kind == wire.PARAMETER_STATUS:
            link.parameter_status.append(whole)
        elif kind == wire.BACKEND_KEY_DATA:
            link.process_id, link.secret_key = _TWO_INT32.unpack_from(whole, 5)
        # NoticeResponse and NegotiateProtocolVersion are not the client's business.
    raise m.ProtocolViolation("the instance's login did not end")


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(5)
    length = _INT32.unpack_from(header, 1)[0]
    if not 4 <= length <= _LOGIN_MESSAGE_BYTES_MAX:
        raise m.ProtocolViolation(f"invalid message length {length} from the instance")
    return header[0], header + await reader.readexactly(length - 4)


async def send_cancel(
    host: str, port: int, process_id: int, secret_key: int, timeout_s: float
) -> None:
    """Forwards a CancelRequest to the instance (which closes the connection after it)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(wire.cancel_request(process_id, secret_key))
            await writer.drain()
            await reader.read(1)
        finally:
            writer.close()


async def read_until_ready(reader: asyncio.StreamReader) -> bool:
    """Reads one request's answers up to ReadyForQuery; False if they held an error."""
    ok = True
    for _ in range(_LOGIN_MESSAGES_MAX):
        kind, _whole = await _read_message(reader)
        if kind == wire.ERROR_RESPONSE:
            ok = False
        elif kind == wire.READY_FOR_QUERY:
            return ok
    raise m.ProtocolViolation("no ReadyForQuery from the instance")
