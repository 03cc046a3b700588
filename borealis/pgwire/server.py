"""The PostgreSQL protocol v3 server: startup, TLS, SCRAM, simple and extended
query protocols, COPY, cancellation. Everything about SQL is the Backend's.

One asyncio task per connection reads bytes, feeds the sans-IO parser
(messages.py) and answers message by message. Answers gather in an output list
that is written when no complete message is left to process (or it grows large),
so a pipelined Parse/Bind/Execute/Sync costs one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from borealis.errors import BorealisError, SqlError, sqlstate_of
from borealis.log import get_logger
from borealis.pgwire import messages as m
from borealis.pgwire import types
from borealis.pgwire.backend import IDLE, Backend, Column, CopySpec, Description, Outcome, Startup
from borealis.pgwire.copy import CopyInParser, format_rows
from borealis.pgwire.scram import MECHANISM, AuthenticationFailed, ScramExchange

log = get_logger("pgwire")

_READ_BYTES = 256 * 1024
# Output is written once it grows past this, even mid-result, to bound memory.
_OUTPUT_BYTES_FLUSH = 256 * 1024
_COPY_BATCH_ROWS = 5000
_PREPARED_STATEMENTS_MAX = 10000
_PORTALS_MAX = 10000
_DEALLOCATE = re.compile(r'\s*deallocate\s+(?:prepare\s+)?(?:"([^"]+)"|(\w+))', re.IGNORECASE)


@dataclass(frozen=True)
class ServerSettings:
    server_version: str = "15.8 (Borealis)"
    connections_max: int = 100
    message_bytes_max: int = 64 * 1024 * 1024
    query_bytes_max: int = 1024 * 1024
    ssl_context: ssl.SSLContext | None = None
    read_only: bool = False
    idle_in_transaction_timeout_ms: int = 0
    """0: no limit."""
    authentication_timeout_ms: int = 60_000
    copy_row_bytes_max: int = 16 * 1024 * 1024
    parameters: Mapping[str, str] = field(default_factory=dict)
    """ParameterStatus values that override the defaults (e.g. TimeZone)."""
    proxy_secret: str | None = None
    """The router's shared secret: a startup packet carrying it as
    PROXY_SECRET_PARAMETER logs in without SCRAM (the router authenticated the
    client already). None: no proxy login is accepted."""


# The startup parameter by which the router presents the proxy secret; it is never
# treated as a client parameter.
PROXY_SECRET_PARAMETER = "_borealis_proxy_secret"

BackendFactory = Callable[[Startup], Awaitable[Backend]]
VerifierOf = Callable[[str], "str | None"]


class _Fatal(Exception):
    """Ends the connection after its ErrorResponse has been written."""


class _Closed(Exception):
    """The client went away."""


class PgServer:
    def __init__(
        self, backend_factory: BackendFactory, verifier_of: VerifierOf, settings: ServerSettings
    ) -> None:
        self._backend_factory = backend_factory
        self._verifier_of = verifier_of
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._by_process_id: dict[int, _Connection] = {}
        self.host = ""
        self.port = 0

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stops accepting, then closes every connection (backends are closed)."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.wait([c.task for c in connections if c.task], timeout=10)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer)
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            if self._by_process_id.get(connection.process_id) is connection:
                del self._by_process_id[connection.process_id]

    def _register(self, connection: _Connection) -> None:
        self._by_process_id[connection.process_id] = connection

    def _cancel(self, request: m.CancelRequest) -> None:
        target = self._by_process_id.get(request.process_id)
        if target is None or not secrets.compare_digest(
            target.secret_key.to_bytes(4, "big", signed=True),
            request.secret_key.to_bytes(4, "big", signed=True),
        ):
            log.info("cancel request ignored", process_id=request.process_id)
            return
        target.cancel()


async def start_server(
    host: str,
    port: int,
    backend_factory: BackendFactory,
    verifier_of: VerifierOf,
    settings: ServerSettings,
) -> PgServer:
    """Listens on host:port (port 0: any free port; see .port)."""
    server = PgServer(backend_factory, verifier_of, settings)
    server._server = await asyncio.start_server(
        server._accept, host, port, limit=_READ_BYTES, backlog=settings.connections_max
    )
    sockname = server._server.sockets[0].getsockname()
    server.host, server.port = sockname[0], sockname[1]
    log.info("pgwire listening", host=server.host, port=server.port)
    return server


@dataclass
class _Prepared:
    sql: str
    description: Description


@dataclass
class _Portal:
    statement: _Prepared
    parameters: list[Any]
    result_formats: tuple[int, ...]
    outcome: Outcome | None = None
    columns: tuple[Column, ...] | None = None
    """The columns the client was told about (Describe); rows are encoded by them."""
    described: bool = False
    position: int = 0
    suspended: bool = False
    builder: m.DataRowBuilder | None = None


class _Connection:
    def __init__(
        self, server: PgServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self.parser = m.FrontendParser(
            self.settings.message_bytes_max, self.settings.query_bytes_max
        )
        self.process_id = 0
        self.secret_key = 0
        self.backend: Backend | None = None
        self.user = ""
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._statements: dict[bytes, _Prepared] = {}
        self._portals: dict[bytes, _Portal] = {}
        self._skip_until_sync = False
        self._tls = False

    # --- lifecycle ---

    async def run(self) -> None:
        try:
            await self._serve()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except _Fatal:
            pass
        except m.ProtocolViolation as error:
            log.info("protocol violation", error=error.message, process_id=self.process_id)
            self._send_error(error, severity="FATAL")
        except TimeoutError:
            self._send(m.error_response("08006", "connection timed out", severity="FATAL"))
        except asyncio.CancelledError:
            self._send(
                m.error_response(
                    "57P01",
                    "terminating connection due to administrator command",
                    severity="FATAL",
                )
            )
        except Exception:  # noqa: BLE001 - a bug must not take down the server
            log.error("connection failed", exc_info=True, process_id=self.process_id)
            self._send(m.error_response("XX000", "internal error", severity="FATAL"))
        finally:
            await self._finish()

    async def _finish(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush()
        if self.backend is not None:
            backend, self.backend = self.backend, None
            try:
                await backend.close()
            except Exception:  # noqa: BLE001 - closing must always finish
                log.error("backend close failed", exc_info=True, process_id=self.process_id)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), timeout=1)

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def cancel(self) -> None:
        if self.backend is not None:
            self.backend.cancel()

    # --- output ---

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)

    async def _flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
            self._out_bytes = 0
        await self.writer.drain()

    async def _maybe_flush(self) -> None:
        if self._out_bytes >= _OUTPUT_BYTES_FLUSH:
            await self._flush()

    def _send_error(self, error: BorealisError, severity: str = "ERROR") -> None:
        sqlstate = sqlstate_of(error)
        if isinstance(error, SqlError):
            self._send(
                m.error_response(
                    sqlstate,
                    error.message,
                    severity=severity,
                    detail=error.detail,
                    hint=error.hint,
                    position=error.position,
                )
            )
        else:
            self._send(m.error_response(sqlstate, error.message, severity=severity))

    # --- input ---

    async def _next_message(self) -> m.FrontendMessage:
        while True:
            message = self.parser.next()
            if message is not None:
                return message
            await self._flush()
            data = await self._read()
            if not data:
                raise _Closed()
            self.parser.feed(data)

    async def _read(self) -> bytes:
        timeout_ms = self.settings.idle_in_transaction_timeout_ms
        if not timeout_ms or self.backend is None or self.backend.transaction_status == IDLE:
            return await self.reader.read(_READ_BYTES)
        try:
            return await asyncio.wait_for(self.reader.read(_READ_BYTES), timeout_ms / 1000)
        except TimeoutError:
            self._send(
                m.error_response(
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout",
                    severity="FATAL",
                )
            )
            raise _Fatal() from None

    # --- startup and authentication ---

    async def _serve(self) -> None:
        timeout_s = self.settings.authentication_timeout_ms / 1000
        async with asyncio.timeout(timeout_s):
            startup = await self._startup()
            if startup is None:
                return
            await self._authenticate(startup)
            await self._open_backend(startup)
        await self._loop()

    async def _startup(self) -> m.StartupMessage | None:
        # At most one SSLRequest and one GSSENCRequest precede the StartupMessage.
        for _ in range(3):
            message = await self._next_message()
            if isinstance(message, m.CancelRequest):
                self.server._cancel(message)
                return None
            if isinstance(message, m.SSLRequest):
                await self._negotiate_tls()
            elif isinstance(message, m.GSSENCRequest):
                self._send(b"N")
            elif isinstance(message, m.StartupMessage):
                return self._check_startup(message)
        raise m.ProtocolViolation("too many negotiation requests")

    async def _negotiate_tls(self) -> None:
        context = self.settings.ssl_context
        if context is None or self._tls:
            self._send(b"N")
            return
        if self.parser.buffered_bytes:
            raise m.ProtocolViolation("received unencrypted data after SSL request")
        self._send(b"S")
        await self._flush()
        try:
            await self.writer.start_tls(context)
        except ssl.SSLError as error:
            # The client's to decide (a CA file that did not sign the certificate,
            # no TLS after all): the connection ends, the server carries on.
            log.info("client TLS handshake failed", error=str(error), process_id=self.process_id)
            raise ConnectionError("TLS handshake failed") from error
        self._tls = True

    def _check_startup(self, message: m.StartupMessage) -> m.StartupMessage:
        major, minor = message.version >> 16, message.version & 0xFFFF
        if major != 3:
            self._send(
                m.error_response(
                    "0A000",
                    f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
                    severity="FATAL",
                )
            )
            raise _Fatal()
        unknown_options = [name for name in message.parameters if name.startswith("_pq_.")]
        if minor > 0 or unknown_options:
            self._send(m.negotiate_protocol_version(0, unknown_options))
        if not message.parameters.get("user"):
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
        if self.server.connection_count > self.settings.connections_max:
            self._fatal("53300", "sorry, too many clients already")
        return message

    def _fatal(self, sqlstate: str, text: str) -> None:
        self._send(m.error_response(sqlstate, text, severity="FATAL"))
        raise _Fatal()

    async def _authenticate(self, startup: m.StartupMessage) -> None:
        self.user = startup.parameters["user"]
        offered = startup.parameters.pop(PROXY_SECRET_PARAMETER, None)
        if offered is not None:
            self._authenticate_proxy(offered)
            return
        exchange = ScramExchange(self.user, self.server._verifier_of(self.user))
        self._send(m.authentication_sasl([MECHANISM]))
        try:
            initial = await self._expect_password()
            mechanism, client_first = m.parse_sasl_initial_response(initial.body)
            if mechanism != MECHANISM:
                self._fatal("08P01", f"SASL authentication mechanism {mechanism} not supported")
            self._send(m.authentication_sasl_continue(exchange.first(client_first)))
            final = await self._expect_password()
            self._send(m.authentication_sasl_final(exchange.final(final.body)))
        except AuthenticationFailed as error:
            log.info("authentication failed", user=self.user)
            self._send_error(error, severity="FATAL")
            raise _Fatal() from None
        self._send(m.AUTHENTICATION_OK)

    def _authenticate_proxy(self, offered: str) -> None:
        """A login through the router, which checked the client's password itself.
        A wrong secret, or none configured, fails exactly as a wrong password does."""
        expected = self.settings.proxy_secret
        if expected is None or not hmac.compare_digest(
            offered.encode("utf-8"), expected.encode("utf-8")
        ):
            log.info("proxy authentication failed", user=self.user)
            self._send_error(AuthenticationFailed(self.user), severity="FATAL")
            raise _Fatal()
        self._send(m.AUTHENTICATION_OK)

    async def _expect_password(self) -> m.PasswordMessage:
        message = await self._next_message()
        if not isinstance(message, m.PasswordMessage):
            raise m.ProtocolViolation("expected SASL response")
        return message

    async def _open_backend(self, startup: m.StartupMessage) -> None:
        parameters = startup.parameters
        database = parameters.get("database") or self.user
        try:
            self.backend = await self.server._backend_factory(
                Startup(self.user, database, dict(parameters))
            )
        except BorealisError as error:
            self._send_error(error, severity="FATAL")
            raise _Fatal() from None
        for name, value in self._parameter_statuses(parameters).items():
            self._send(m.parameter_status(name, value))
        self.process_id, self.secret_key = self._new_key()
        self.server._register(self)
        self._send(m.backend_key_data(self.process_id, self.secret_key))
        self._send(m.ready_for_query(self.backend.transaction_status))

    def _new_key(self) -> tuple[int, int]:
        while True:
            process_id = secrets.randbelow(2**31 - 2) + 1
            if process_id not in self.server._by_process_id:
                return process_id, secrets.randbits(32) - 2**31

    def _parameter_statuses(self, parameters: Mapping[str, str]) -> dict[str, str]:
        read_only = "on" if self.settings.read_only else "off"
        statuses = {
            "application_name": parameters.get("application_name", ""),
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "default_transaction_read_only": read_only,
            "in_hot_standby": read_only,
            "integer_datetimes": "on",
            "IntervalStyle": "postgres",
            "is_superuser": "on",
            "server_encoding": "UTF8",
            "server_version": self.settings.server_version,
            "session_authorization": self.user,
            "standard_conforming_strings": "on",
            "TimeZone": "UTC",
        }
        statuses.update(self.settings.parameters)
        return statuses

    # --- the query loop ---

    async def _loop(self) -> None:
        while True:
            message = await self._next_message()
            if self._skip_until_sync and not isinstance(message, m.Sync | m.Terminate):
                continue
            if isinstance(message, m.Terminate):
                return
            try:
                await self._dispatch(message)
            except BorealisError as error:
                await self._on_error(error, extended=_is_extended(message))
            except (_Fatal, _Closed, m.ProtocolViolation, asyncio.CancelledError):
                raise
            except Exception:  # noqa: BLE001 - a bug answers XX000, the server goes on
                log.error("statement failed", exc_info=True, process_id=self.process_id)
                error = SqlError("internal error", "XX000")
                await self._on_error(error, extended=_is_extended(message))
            await self._maybe_flush()

    async def _on_error(self, error: BorealisError, extended: bool) -> None:
        if isinstance(error, m.ProtocolViolation):
            raise error
        self._send_error(error)
        if extended:
            self._skip_until_sync = True
        else:
            self._send_ready()

    def _send_ready(self) -> None:
        assert self.backend is not None
        self._send(m.ready_for_query(self.backend.transaction_status))

    async def _dispatch(self, message: m.FrontendMessage) -> None:
        kind = type(message)
        if kind is m.Query:
            await self._simple_query(message)  # type: ignore[arg-type]
        elif kind is m.Parse:
            await self._parse(message)  # type: ignore[arg-type]
        elif kind is m.Bind:
            self._bind(message)  # type: ignore[arg-type]
        elif kind is m.Execute:
            await self._execute(message)  # type: ignore[arg-type]
        elif kind is m.Sync:
            self._sync()
        elif kind is m.Describe:
            await self._describe(message)  # type: ignore[arg-type]
        elif kind is m.Close:
            self._close(message)  # type: ignore[arg-type]
        elif kind is m.Flush:
            await self._flush()
        elif kind is m.Oversized:
            raise SqlError("statement is too long", "54000")
        elif kind in (m.CopyData, m.CopyDone, m.CopyFail):
            # Left over from a COPY that failed: PostgreSQL drops them.
            return
        else:
            raise m.ProtocolViolation(f"unexpected message {kind.__name__}")

    @staticmethod
    def _sql_text(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SqlError('invalid byte sequence for encoding "UTF8"', "22021") from None

    # --- simple query ---

    async def _simple_query(self, message: m.Query) -> None:
        assert self.backend is not None
        # A simple Query closes the unnamed statement and portal, as PostgreSQL does.
        self._statements.pop(b"", None)
        self._portals.pop(b"", None)
        statements = self.backend.split(self._sql_text(message.sql))
        if not statements:
            self._send(m.EMPTY_QUERY_RESPONSE)
        for sql in statements:
            outcome = await self.backend.execute(sql, (), ())
            self._deallocate(sql, outcome.tag)
            await self._send_outcome(outcome, outcome.columns, None, 0)
        self._send_ready()

    async def _send_outcome(
        self,
        outcome: Outcome,
        columns: tuple[Column, ...] | None,
        portal: _Portal | None,
        row_limit: int,
    ) -> None:
        """Answers one executed statement; with a portal, from its position on."""
        if outcome.copy is not None:
            await self._copy(outcome, outcome.copy)
        elif columns is None:
            self._send(m.command_complete(outcome.tag))
        else:
            if portal is None:
                self._send(m.row_description(columns, [0] * len(columns)))
                builder = _builder(columns, ())
                await self._send_rows(builder, outcome.rows)
                self._send(m.command_complete(outcome.tag))
            else:
                await self._send_portal_rows(portal, outcome, row_limit)
        for name, value in outcome.parameter_status.items():
            self._send(m.parameter_status(name, value))

    async def _send_rows(self, builder: m.DataRowBuilder, rows: Sequence[Sequence[Any]]) -> None:
        build, send = builder.build, self._out.append
        for start in range(0, len(rows), 1000):
            chunk = b"".join([build(row) for row in rows[start : start + 1000]])
            send(chunk)
            self._out_bytes += len(chunk)
            await self._maybe_flush()

    # --- extended query ---

    async def _parse(self, message: m.Parse) -> None:
        assert self.backend is not None
        if message.name and message.name in self._statements:
            name = message.name.decode("utf-8", "replace")
            raise SqlError(f'prepared statement "{name}" already exists', "42P05")
        if len(self._statements) >= _PREPARED_STATEMENTS_MAX:
            raise SqlError("too many prepared statements", "54000")
        sql = self._sql_text(message.sql)
        description = await self.backend.describe(sql, message.parameter_oids)
        self._statements[message.name] = _Prepared(sql, description)
        self._send(m.PARSE_COMPLETE)

    def _bind(self, message: m.Bind) -> None:
        statement = self._statements.get(message.statement)
        if statement is None:
            name = message.statement.decode("utf-8", "replace")
            raise SqlError(f'prepared statement "{name}" does not exist', "26000")
        if message.portal and message.portal in self._portals:
            name = message.portal.decode("utf-8", "replace")
            raise SqlError(f'portal "{name}" already exists', "42P03")
        if len(self._portals) >= _PORTALS_MAX:
            raise SqlError("too many portals", "54000")
        oids = statement.description.parameter_oids
        values = message.parameters
        if len(values) != len(oids):
            name = message.statement.decode("utf-8", "replace")
            raise SqlError(
                f"bind message supplies {len(values)} parameters, "
                f'but prepared statement "{name}" requires {len(oids)}',
                "08P01",
            )
        formats = _expand_formats(message.parameter_formats, len(values), "parameter")
        decoded = [
            types.decode_parameter(oid, code, value)
            for oid, code, value in zip(oids, formats, values, strict=True)
        ]
        self._portals[message.portal] = _Portal(statement, decoded, message.result_formats)
        self._send(m.BIND_COMPLETE)

    async def _describe(self, message: m.Describe) -> None:
        if message.kind == b"S":
            statement = self._statements.get(message.name)
            if statement is None:
                name = message.name.decode("utf-8", "replace")
                raise SqlError(f'prepared statement "{name}" does not exist', "26000")
            description = statement.description
            self._send(m.parameter_description(description.parameter_oids))
            columns = description.columns
            if columns is None:
                self._send(m.NO_DATA)
            else:
                self._send(m.row_description(columns, [0] * len(columns)))
            return
        portal = self._portal(message.name)
        outcome = await self._run_portal(portal)
        portal.described = True
        portal.columns = None if outcome.copy is not None else outcome.columns
        if portal.columns is None:
            self._send(m.NO_DATA)
            return
        formats = _expand_formats(portal.result_formats, len(portal.columns), "result")
        self._send(m.row_description(portal.columns, formats))

    def _portal(self, name: bytes) -> _Portal:
        portal = self._portals.get(name)
        if portal is None:
            text = name.decode("utf-8", "replace")
            raise SqlError(f'portal "{text}" does not exist', "34000")
        return portal

    async def _run_portal(self, portal: _Portal) -> Outcome:
        if portal.outcome is None:
            assert self.backend is not None
            statement = portal.statement
            portal.outcome = await self.backend.execute(
                statement.sql, portal.parameters, statement.description.parameter_oids
            )
            self._deallocate(statement.sql, portal.outcome.tag)
        return portal.outcome

    def _deallocate(self, sql: str, tag: str) -> None:
        """SQL DEALLOCATE shares its namespace with protocol-level prepared statements,
        which live here: the backend accepts the statement (tag "DEALLOCATE" or
        "DEALLOCATE ALL") and the server forgets the statements."""
        if not tag.startswith("DEALLOCATE"):
            return
        if tag == "DEALLOCATE ALL":
            self._statements.clear()
            return
        match = _DEALLOCATE.match(sql)
        if match is not None:
            name = match.group(1) or match.group(2).lower()
            self._statements.pop(name.encode("utf-8"), None)

    async def _execute(self, message: m.Execute) -> None:
        portal = self._portal(message.portal)
        already_run = portal.outcome is not None
        outcome = await self._run_portal(portal)
        if not portal.described:
            described = portal.statement.description.columns
            portal.columns = described if described is not None else outcome.columns
        if outcome.copy is not None:
            if already_run and portal.position:
                raise SqlError("COPY portal already completed", "55000")
            portal.position = 1
            await self._send_outcome(outcome, None, portal, 0)
            return
        await self._send_outcome(outcome, portal.columns, portal, message.row_limit)

    async def _send_portal_rows(self, portal: _Portal, outcome: Outcome, row_limit: int) -> None:
        columns = portal.columns
        assert columns is not None
        if portal.builder is None:
            if outcome.columns is not None and len(outcome.columns) != len(columns):
                raise SqlError("result columns differ from the statement's description", "XX000")
            portal.builder = _builder(columns, portal.result_formats)
        rows = outcome.rows
        end = len(rows) if row_limit == 0 else min(len(rows), portal.position + row_limit)
        start = portal.position
        await self._send_rows(portal.builder, rows[start:end])
        portal.position = end
        if end < len(rows):
            portal.suspended = True
            self._send(m.PORTAL_SUSPENDED)
        elif portal.suspended or start > 0:
            self._send(m.command_complete(_select_tag(outcome.tag, end - start)))
        else:
            self._send(m.command_complete(outcome.tag))

    def _close(self, message: m.Close) -> None:
        if message.kind == b"S":
            self._statements.pop(message.name, None)
        else:
            self._portals.pop(message.name, None)
        self._send(m.CLOSE_COMPLETE)

    def _sync(self) -> None:
        assert self.backend is not None
        self._skip_until_sync = False
        if self.backend.transaction_status == IDLE:
            # Portals live until their transaction ends; outside one, that is now.
            self._portals.clear()
        self._send_ready()

    # --- COPY ---

    async def _copy(self, outcome: Outcome, spec: CopySpec) -> None:
        if spec.direction == "out":
            self._copy_out(outcome, spec)
        else:
            await self._copy_in(spec)

    def _copy_out(self, outcome: Outcome, spec: CopySpec) -> None:
        columns = outcome.columns or ()
        self._send(m.copy_out_response(False, spec.column_count))
        oids = [column.type_oid for column in columns]
        if len(oids) != spec.column_count:
            oids = [0] * spec.column_count
        header = [column.name for column in columns] if columns else None
        for payload in format_rows(spec, oids, outcome.rows, header):
            self._send(m.copy_data(payload))
        self._send(m.COPY_DONE)
        self._send(m.command_complete(outcome.tag))

    async def _copy_in(self, spec: CopySpec) -> None:
        assert self.backend is not None
        self._send(m.copy_in_response(False, spec.column_count))
        parser = CopyInParser(spec, self.settings.copy_row_bytes_max)
        batch: list[list[str | None]] = []
        try:
            while True:
                message = await self._next_message()
                if isinstance(message, m.CopyData):
                    batch.extend(parser.feed(message.data))
                    if len(batch) >= _COPY_BATCH_ROWS:
                        await self.backend.copy_rows(batch)
                        batch = []
                elif isinstance(message, m.CopyDone):
                    batch.extend(parser.finish())
                    if batch:
                        await self.backend.copy_rows(batch)
                    outcome = await self.backend.copy_done()
                    self._send(m.command_complete(outcome.tag))
                    return
                elif isinstance(message, m.CopyFail):
                    text = message.message.decode("utf-8", "replace")
                    raise SqlError(f"COPY from stdin failed: {text}", "57014")
                elif not isinstance(message, m.Flush | m.Sync):
                    raise SqlError(
                        f"unexpected message type {type(message).__name__} during COPY from stdin",
                        "08P01",
                    )
        except BaseException as error:
            await self._abandon_copy(error)
            raise

    async def _abandon_copy(self, error: BaseException) -> None:
        assert self.backend is not None
        try:
            await self.backend.copy_fail(str(error))
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.error("copy_fail failed", exc_info=True, process_id=self.process_id)


def _is_extended(message: m.FrontendMessage) -> bool:
    """Whether an error in answering `message` skips to Sync (extended protocol) or
    ends with ReadyForQuery (simple Query)."""
    if isinstance(message, m.Oversized):
        return message.kind != b"Q"
    return not isinstance(message, m.Query)


def _expand_formats(codes: tuple[int, ...], count: int, what: str) -> tuple[int, ...]:
    if len(codes) == count:
        return codes
    if not codes:
        return (0,) * count
    if len(codes) == 1:
        return codes * count
    raise SqlError(f"bind message has {len(codes)} {what} formats but {count} {what}s", "08P01")


def _builder(columns: Sequence[Column], result_formats: tuple[int, ...]) -> m.DataRowBuilder:
    formats = _expand_formats(result_formats, len(columns), "result")
    return m.DataRowBuilder(
        [types.encoder(c.type_oid, f) for c, f in zip(columns, formats, strict=True)]
    )


def _select_tag(tag: str, rows: int) -> str:
    verb = tag.split(" ", 1)[0]
    return f"{verb} {rows}" if verb in ("SELECT", "FETCH") else tag
