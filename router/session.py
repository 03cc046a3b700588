"""One client connection through the router.

The router authenticates the client itself (SCRAM-SHA-256 against users.json),
logs in to an instance with the proxy secret, gives the client its own
BackendKeyData, then relays bytes both ways. The relay works on the transports'
callbacks (no task, no stream buffer in the path): each chunk from one side is
scanned and written to the other, and a side whose peer cannot take more is
paused until it can. A scanner on each direction follows message boundaries so the session knows when
it is idle: no request in flight, no half-sent extended-protocol batch, and the
last ReadyForQuery said "I" (not in a transaction).

An idle session whose instance left its endpoint is moved: a new backend login
on another instance of the endpoint, with the client's named prepared statements
prepared again there. Only the startup parameters and prepared statements carry
over; settings made with SET, temporary tables and the like are lost. A session
inside a transaction is never moved; it is closed (57P01) only when its instance
is gone. An idle session whose instance goes away (a restart, a failover) waits up
to failover_wait_ms for an instance of its endpoint and goes on there; one inside
a transaction is closed (08006, after the instance's own 57P01 if it sent one).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import TYPE_CHECKING, Any

from borealis.log import get_logger
from borealis.pgwire import messages as m
from borealis.pgwire.scram import MECHANISM, AuthenticationFailed, ScramExchange
from borealis.pgwire.server import PROXY_SECRET_PARAMETER
from router import backend, wire

if TYPE_CHECKING:
    from router.proxy import Router

log = get_logger("router")

READ_BYTES = 256 * 1024
_IDLE = b"I"
_DEALLOCATE = re.compile(rb'\s*deallocate\s+(?:prepare\s+)?(?:"([^"]+)"|(\w+))', re.IGNORECASE)
# How often a session whose instance went away tries to reconnect.
_RECONNECT_INTERVAL_S = 0.1
_FRONTEND_CAPTURE = frozenset({wire.QUERY, wire.PARSE, wire.CLOSE})
_FRONTEND_REPORT = _FRONTEND_CAPTURE | {wire.SYNC, wire.FUNCTION_CALL, wire.TERMINATE}
# After these the client has no extended-protocol batch open.
_BATCH_ENDS = frozenset({wire.QUERY, wire.SYNC, wire.FUNCTION_CALL})


class _Fatal(Exception):
    """Ends the session after its ErrorResponse has been written."""


class NoInstance(Exception):
    """No instance of the endpoint can take the connection."""


class Session:
    def __init__(
        self,
        router: Router,
        endpoint: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        process_id: int,
        secret_key: int,
    ) -> None:
        self.router = router
        self.endpoint = endpoint
        self.process_id = process_id
        self.secret_key = secret_key
        self.client_reader = reader
        self.client_writer = writer
        self.task: asyncio.Task[None] | None = None
        self.link: backend.BackendLink | None = None
        self.user = ""
        self._parameters: dict[str, str] = {}
        config = router.config
        self._front = wire.MessageScanner(
            _FRONTEND_REPORT, _FRONTEND_CAPTURE, config.message_bytes_max
        )
        self._front.last_kind = wire.SYNC
        # Requests (Query, Sync, FunctionCall) sent whose ReadyForQuery has not come back.
        self._pending = 0
        # Extended-protocol messages sent since the last Sync.
        self._batch_open = False
        self._status = _IDLE
        self._statements: dict[bytes, bytes] = {}
        self._statement_bytes = 0
        self._statements_overflow = False
        self._client: _ClientSide | None = None
        self._client_transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self._finished = asyncio.Event()
        # What the client sent during a move, for the new backend.
        self._held: list[bytes] = []
        self._moving = False
        self._move_wanted = False
        self._move_task: asyncio.Task[None] | None = None
        self._closing = False
        self._tls = False

    # --- state ---

    @property
    def idle(self) -> bool:
        return (
            self._pending == 0
            and not self._batch_open
            and self._status == _IDLE
            and not self._front.mid_message
            and self.link is not None
            and not self.link.scanner.mid_message
        )

    @property
    def instance(self) -> str | None:
        return self.link.instance if self.link is not None else None

    # --- lifecycle ---

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            await self._serve()
        except (_Fatal, ConnectionError, asyncio.IncompleteReadError):
            pass
        except m.ProtocolViolation as error:
            log.info("protocol violation", error=error.message, process_id=self.process_id)
            self._send_fatal("08P01", error.message)
        except TimeoutError:
            self._send_fatal("08006", "connection timed out")
        except asyncio.CancelledError:
            self._send_fatal("57P01", "terminating connection due to administrator command")
        except Exception:  # noqa: BLE001 - a bug must not take down the router
            log.error("session failed", exc_info=True, process_id=self.process_id)
            self._send_fatal("XX000", "internal error in the router")
        finally:
            self._close()

    def _close(self) -> None:
        self._closing = True
        if self._move_task is not None:
            self._move_task.cancel()
        self._set_link(None)
        self.client_writer.close()
        self._finished.set()

    def _send_fatal(self, sqlstate: str, text: str) -> None:
        if not self.client_writer.is_closing():
            self.client_writer.write(m.error_response(sqlstate, text, severity="FATAL"))

    def terminate(self, sqlstate: str, text: str) -> None:
        """Ends the session from outside its task, telling the client why."""
        if self._closing:
            return
        log.info("session terminated", process_id=self.process_id, sqlstate=sqlstate, reason=text)
        self._send_fatal(sqlstate, text)
        self._close()

    async def _serve(self) -> None:
        timeout_s = self.router.config.authentication_timeout_ms / 1000
        async with asyncio.timeout(timeout_s):
            parser = m.FrontendParser(
                self.router.config.message_bytes_max, self.router.config.message_bytes_max
            )
            startup = await self._startup(parser)
            if startup is None:
                return
            await self._authenticate(parser, startup)
            if parser.buffered_bytes:
                raise m.ProtocolViolation("unexpected data before ReadyForQuery")
            link = await self._open_first_backend()
        self._greet(link)
        await self._relay()

    # --- startup and authentication ---

    async def _next_message(self, parser: m.FrontendParser) -> m.FrontendMessage:
        while True:
            message = parser.next()
            if message is not None:
                return message
            await self.client_writer.drain()
            data = await self.client_reader.read(READ_BYTES)
            if not data:
                raise ConnectionError("client closed the connection")
            parser.feed(data)

    async def _startup(self, parser: m.FrontendParser) -> m.StartupMessage | None:
        # At most one SSLRequest and one GSSENCRequest precede the StartupMessage.
        for _ in range(3):
            message = await self._next_message(parser)
            if isinstance(message, m.CancelRequest):
                self.router.cancel(message.process_id, message.secret_key)
                return None
            if isinstance(message, m.SSLRequest):
                await self._negotiate_tls(parser)
            elif isinstance(message, m.GSSENCRequest):
                self.client_writer.write(b"N")
            elif isinstance(message, m.StartupMessage):
                return self._check_startup(message)
        raise m.ProtocolViolation("too many negotiation requests")

    async def _negotiate_tls(self, parser: m.FrontendParser) -> None:
        """Answers an SSLRequest: "S" and the TLS handshake when the router has a
        certificate (`up --tls`), else "N" and the client goes on in plain text (or
        gives up, with sslmode=require), as PostgreSQL does."""
        context = self.router.ssl_context
        if context is None or self._tls:
            self.client_writer.write(b"N")
            return
        # Bytes sent before the handshake would be taken as inside the tunnel.
        if parser.buffered_bytes:
            raise m.ProtocolViolation("received unencrypted data after SSL request")
        self.client_writer.write(b"S")
        await self.client_writer.drain()
        try:
            await self.client_writer.start_tls(context)
        except ssl.SSLError as error:
            # The client's to decide (a CA file that did not sign the certificate,
            # no TLS after all): the connection ends, the router carries on.
            log.info("client TLS handshake failed", error=str(error), process_id=self.process_id)
            raise ConnectionError("TLS handshake failed") from error
        self._tls = True

    def _check_startup(self, message: m.StartupMessage) -> m.StartupMessage:
        major, minor = message.version >> 16, message.version & 0xFFFF
        if major != 3:
            self._fatal(
                "0A000",
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            )
        unknown_options = [name for name in message.parameters if name.startswith("_pq_.")]
        if minor > 0 or unknown_options:
            self.client_writer.write(m.negotiate_protocol_version(0, unknown_options))
        if not message.parameters.get("user"):
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
        if self.router.session_count > self.router.config.connections_max:
            self._fatal("53300", "sorry, too many clients already")
        # A client may not present a proxy secret of its own.
        self._parameters = {
            name: value
            for name, value in message.parameters.items()
            if not name.startswith("_pq_.") and name != PROXY_SECRET_PARAMETER
        }
        return message

    def _fatal(self, sqlstate: str, text: str) -> None:
        self._send_fatal(sqlstate, text)
        raise _Fatal()

    async def _authenticate(self, parser: m.FrontendParser, startup: m.StartupMessage) -> None:
        self.user = startup.parameters["user"]
        exchange = ScramExchange(self.user, self.router.verifier_of(self.user))
        self.client_writer.write(m.authentication_sasl([MECHANISM]))
        try:
            initial = await self._expect_password(parser)
            mechanism, client_first = m.parse_sasl_initial_response(initial.body)
            if mechanism != MECHANISM:
                self._fatal("08P01", f"SASL authentication mechanism {mechanism} not supported")
            self.client_writer.write(m.authentication_sasl_continue(exchange.first(client_first)))
            final = await self._expect_password(parser)
            self.client_writer.write(m.authentication_sasl_final(exchange.final(final.body)))
        except AuthenticationFailed as error:
            log.info("authentication failed", user=self.user)
            self.router.count("authentication_failures")
            self._fatal("28P01", error.message)

    async def _expect_password(self, parser: m.FrontendParser) -> m.PasswordMessage:
        message = await self._next_message(parser)
        if not isinstance(message, m.PasswordMessage):
            raise m.ProtocolViolation("expected SASL response")
        return message

    async def _open_first_backend(self) -> backend.BackendLink:
        """The session's first instance. While its endpoint has none (a writer
        restarting or failing over), the login waits up to login_wait_ms, as a
        client of a managed database expects a failover to cost a pause, not an
        error. A paused cluster is resumed meanwhile (Router.choose asks for it)."""
        loop = asyncio.get_running_loop()
        began_s = loop.time()
        deadline = began_s + self.router.config.login_wait_ms / 1000
        held = False
        while True:
            try:
                link = await self._open_backend(frozenset())
                if held:
                    self.router.login_held(self.endpoint, loop.time() - began_s)
                return link
            except backend.BackendRefused as refused:
                # The instance's own answer (e.g. 3D000, unknown database) is the client's.
                self.client_writer.write(refused.error_message)
                raise _Fatal() from None
            except (NoInstance, backend.BackendUnreachable) as error:
                if loop.time() >= deadline:
                    if isinstance(error, NoInstance):
                        self._fatal(
                            "57P03", f"no instance of the {self.endpoint} endpoint is available"
                        )
                    self._fatal("08006", f"could not connect to an instance: {error}")
            held = True
            await asyncio.sleep(_RECONNECT_INTERVAL_S)

    async def _open_backend(self, exclude: frozenset[str]) -> backend.BackendLink:
        """A login on the endpoint's best instance; an unreachable one is skipped."""
        tried = set(exclude)
        last_error: backend.BackendUnreachable | None = None
        for _ in range(self.router.backend_attempts_max):
            info = self.router.choose(self.endpoint, tried)
            if info is None:
                break
            tried.add(info.name)
            try:
                return await backend.connect(
                    info.name,
                    info.pg_host,
                    info.pg_port,
                    self._parameters,
                    self.router.proxy_secret,
                    self.router.config.backend_connect_timeout_ms / 1000,
                )
            except backend.BackendUnreachable as error:
                log.info("instance unreachable", instance=info.name, error=str(error))
                last_error = error
        if last_error is not None:
            raise last_error
        raise NoInstance(self.endpoint)

    def _greet(self, link: backend.BackendLink) -> None:
        parts = [m.AUTHENTICATION_OK, *link.parameter_status]
        parts.append(m.backend_key_data(self.process_id, self.secret_key))
        parts.append(m.ready_for_query(_IDLE))
        self.client_writer.write(b"".join(parts))
        self._client = _ClientSide(self)
        self._client_transport = self.client_writer.transport
        # From here on the client's bytes come to _ClientSide, not to the stream.
        self._client_transport.set_protocol(self._client)
        self._set_link(link)

    def _set_link(self, link: backend.BackendLink | None) -> None:
        """Changes the backend in one place (the router counts connections per instance)."""
        old = self.link
        if old is not None:
            old.close()
        self.link = link
        self.router.link_changed(self, old, link)
        if link is not None:
            link.relay_to(self)

    # --- relay ---

    async def _relay(self) -> None:
        """Waits while the transports' callbacks relay, until the client is gone."""
        await self._finished.wait()

    def from_client(self, data: bytes) -> None:
        try:
            terminating = self._note_frontend(self._front.feed(data))
        except m.ProtocolViolation as error:
            self.terminate("08P01", error.message)
            return
        link = self.link
        if self._moving or link is None:
            # Held until the move ends; the client is paused meanwhile.
            self._held.append(data)
            _set_reading(self._client_transport, False)
            return
        transport = link.transport
        transport.write(data)
        if terminating:
            self._close()

    def client_closed(self) -> None:
        self._finished.set()

    def client_writable(self, writable: bool) -> None:
        link = self.link
        if link is not None and not link.closed:
            _set_reading(link.transport, writable)

    def backend_writable(self, writable: bool) -> None:
        if not self._closing:
            _set_reading(self._client_transport, writable)

    def _note_frontend(self, events: list[wire.Event]) -> bool:
        """Follows what the client sent; True when it said Terminate."""
        for kind, body in events:
            if kind == wire.SYNC or kind == wire.FUNCTION_CALL:
                self._pending += 1
            elif kind == wire.QUERY:
                self._pending += 1
                assert body is not None
                if wire.is_deallocate(body):
                    self._forget_deallocated(body)
            elif kind == wire.TERMINATE:
                return True
            elif kind == wire.PARSE:
                assert body is not None
                self._remember_statement(body)
            elif kind == wire.CLOSE:
                assert body is not None
                if body[:1] == b"S":
                    self._forget_statement(wire.first_string(body, 1))
        # Any other message (Bind, Execute, Describe, Flush, ...) opens a batch.
        self._batch_open = self._front.last_kind not in _BATCH_ENDS
        return False

    def _remember_statement(self, body: bytes) -> None:
        name = wire.first_string(body)
        if not name:
            return
        self._forget_statement(name)
        config = self.router.config
        if (
            len(self._statements) >= config.session_statements_max
            or self._statement_bytes + len(body) > config.session_statement_bytes_max
        ):
            # Too many to prepare again elsewhere: this session is not moved while idle.
            self._statements_overflow = True
            return
        self._statements[name] = body
        self._statement_bytes += len(body)

    def _forget_statement(self, name: bytes) -> None:
        body = self._statements.pop(name, None)
        if body is not None:
            self._statement_bytes -= len(body)

    def _forget_deallocated(self, sql: bytes) -> None:
        match = _DEALLOCATE.match(sql)
        if match is None or match.group(2) is not None and match.group(2).lower() == b"all":
            self._statements.clear()
            self._statement_bytes = 0
        else:
            self._forget_statement(match.group(1) or match.group(2).lower())

    def from_backend(self, link: backend.BackendLink, data: bytes) -> None:
        if link is not self.link or self._closing:
            return
        at_boundary = not link.scanner.mid_message
        try:
            events = link.scanner.feed(data)
        except m.ProtocolViolation as error:
            log.error("instance broke the protocol", instance=link.instance, error=error.message)
            self.terminate("08006", f"instance {link.instance} broke the protocol")
            return
        if at_boundary and data[0] == wire.ERROR_RESPONSE and self._nothing_asked():
            # An error nobody asked for: the instance is ending the session (shutting
            # down). An idle session moves instead of seeing it.
            log.info("instance ended the session", instance=link.instance)
            link.close()
            self._backend_lost(link)
            return
        for kind, body in events:
            if kind == wire.READY_FOR_QUERY:
                self._pending -= 1
                self._status = body[:1]  # type: ignore[index]
        self._client_transport.write(data)
        if self._move_wanted and self.idle:
            self._start_move(required=False)

    def backend_closed(self, link: backend.BackendLink) -> None:
        if link is self.link and not self._closing:
            self._backend_lost(link)

    def _nothing_asked(self) -> bool:
        return self._pending == 0 and not self._batch_open and self._status == _IDLE

    def _backend_lost(self, link: backend.BackendLink) -> None:
        if self._nothing_asked() and not self._front.mid_message:
            # Idle: reconnect, waiting for a while if no instance is available (a
            # writer restarting or failing over); the lost one may come back.
            self._start_move(required=True, lost=True)
        else:
            self.terminate("08006", f"lost the connection to instance {link.instance}")

    # --- moves ---

    def reconsider(self) -> None:
        """Called when the topology or health changed: move off an instance that
        left this session's endpoint, or close the session when that instance is
        gone and the session is inside a transaction."""
        link = self.link
        if link is None or self._moving or self._closing:
            return
        if self.router.is_eligible(self.endpoint, link.instance):
            self._move_wanted = False
            return
        gone = self.router.is_gone(link.instance)
        if self.idle and (gone or not self._statements_overflow):
            self._start_move(required=gone)
        elif gone:
            self.terminate(
                "57P01", f"terminating connection because instance {link.instance} is gone"
            )
        else:
            self._move_wanted = not self._statements_overflow

    def _start_move(self, required: bool, lost: bool = False) -> None:
        if self._moving or self._closing:
            return
        self._moving = True
        self._move_task = asyncio.create_task(self._move(required, lost))

    async def _move(self, required: bool, lost: bool) -> None:
        """Opens a backend on another instance of the endpoint (on any, the old one
        included, when the old link was `lost`) and switches the session to it. A
        lost link is replaced within failover_wait_ms or the session ends."""
        old = self.link
        assert old is not None
        new = await self._open_replacement(old.instance, lost)
        if new is None:
            self._end_move()
            # The old link may have died while the move was being tried.
            if required or old.closed:
                self.terminate(
                    "57P01", f"instance {old.instance} is gone and no other is available"
                )
            return
        if self._closing:
            new.close()
            return
        log.info("session moved", process_id=self.process_id, old=old.instance, new=new.instance)
        self.router.count("sessions_moved")
        self._set_link(new)
        self._move_wanted = False
        self._end_move()

    def _end_move(self) -> None:
        """Sends what the client said meanwhile to the (new or old) backend."""
        self._moving = False
        held, self._held = self._held, []
        link = self.link
        if self._closing or link is None or link.closed:
            return
        if held:
            link.transport.write(b"".join(held))
        _set_reading(self._client_transport, True)

    async def _open_replacement(self, old: str, lost: bool) -> backend.BackendLink | None:
        exclude = frozenset() if lost else frozenset({old})
        loop = asyncio.get_running_loop()
        wait_s = self.router.config.failover_wait_ms / 1000 if lost else 0.0
        deadline = loop.time() + wait_s
        while True:
            try:
                new = await self._open_backend(exclude)
                await self._prepare_again(new)
                return new
            except (NoInstance, backend.BackendRefused, backend.BackendUnreachable) as error:
                if loop.time() >= deadline:
                    log.info("session not moved", process_id=self.process_id, error=repr(error))
                    return None
            await asyncio.sleep(_RECONNECT_INTERVAL_S)

    async def _prepare_again(self, link: backend.BackendLink) -> None:
        """Prepares the client's named statements on the new instance. Each Parse has
        its own Sync so that one failure (e.g. a table dropped since) skips only it."""
        if not self._statements:
            return
        names = list(self._statements)
        link.writer.write(
            b"".join(wire.message(b"P", self._statements[n]) + wire.sync() for n in names)
        )
        timeout_s = self.router.config.backend_connect_timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout_s):
                for name in names:
                    if not await backend.read_until_ready(link.reader):
                        self._forget_statement(name)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, m.ProtocolViolation):
            link.close()
            raise backend.BackendUnreachable(
                f"preparing statements on {link.instance} failed"
            ) from None

    # --- cancel ---

    def forward_cancel(self) -> None:
        link = self.link
        if link is None:
            return
        config = self.router.config
        task = asyncio.create_task(
            backend.send_cancel(
                link.host,
                link.port,
                link.process_id,
                link.secret_key,
                config.backend_connect_timeout_ms / 1000,
            )
        )
        self.router.keep(task)


def _set_reading(transport: Any, reading: bool) -> None:
    """Pauses or resumes reading from a transport that may be closing already."""
    if transport.is_closing():
        return
    if reading:
        transport.resume_reading()
    else:
        transport.pause_reading()


class _ClientSide(asyncio.Protocol):
    """The client's transport after the login: every callback goes to the session."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def data_received(self, data: bytes) -> None:
        self._session.from_client(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.client_closed()

    def pause_writing(self) -> None:
        self._session.client_writable(False)

    def resume_writing(self) -> None:
        self._session.client_writable(True)
