"""What the PostgreSQL protocol server asks of the database behind it.

The server (borealis/pgwire/server.py) speaks protocol v3: startup, SCRAM, the
simple and extended query protocols, COPY framing, ReadyForQuery. Everything about
SQL is the backend's: one Backend per client connection (compute_node/sql/session.py
on an instance; the router has its own later).

Values cross this boundary as plain Python values of the SQLite world:
None, int, float, str, bytes. The server decodes parameters (text or binary, by
the parameter's type OID) into such values with borealis/pgwire/types.py
(`decode_parameter`), and encodes result values by the column's type OID
(`encode_value`), so the backend never sees wire formats.

Errors: the backend raises BorealisError subclasses; the server answers
ErrorResponse with `sqlstate_of(error)`, the message, and for SqlError its
position, detail and hint. After an error the extended protocol skips to Sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# ReadyForQuery transaction status bytes.
IDLE = b"I"
IN_TRANSACTION = b"T"
FAILED_TRANSACTION = b"E"


@dataclass(frozen=True)
class Startup:
    """The StartupMessage's parameters the backend is opened with."""

    user: str
    database: str
    parameters: Mapping[str, str]
    """Everything the client sent (application_name, client_encoding, options, ...)."""


@dataclass(frozen=True)
class Column:
    """A RowDescription field."""

    name: str
    type_oid: int
    table_oid: int = 0
    column_number: int = 0


@dataclass(frozen=True)
class Description:
    """What Describe (statement) answers: ParameterDescription, then RowDescription
    or NoData (`columns` None: the statement returns no rows)."""

    parameter_oids: tuple[int, ...]
    columns: tuple[Column, ...] | None


@dataclass(frozen=True)
class CopySpec:
    """A COPY ... FROM STDIN / TO STDOUT, as parsed by the backend."""

    direction: Literal["in", "out"]
    format: Literal["text", "csv"]
    column_count: int
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool = False
    quote: str = '"'
    escape: str = '"'


@dataclass
class Outcome:
    """The result of one statement.

    `tag` is the whole CommandComplete tag ("SELECT 3", "INSERT 0 1", "CREATE TABLE").
    `columns` None: no RowDescription (not a row-returning statement).
    `copy` set: a COPY; for direction "in" the server runs the copy-in sub-protocol
    (CopyInResponse, then copy_rows/copy_done/copy_fail), for "out" it sends `rows`
    as CopyData in the spec's format; the tag is "COPY n".
    `parameter_status`: ParameterStatus messages to send (a SET of a reported
    setting such as application_name, TimeZone, DateStyle).
    """

    tag: str
    columns: tuple[Column, ...] | None = None
    rows: Sequence[tuple[Any, ...]] = ()
    copy: CopySpec | None = None
    parameter_status: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """One client session of the database.

    The server calls these one at a time, in the client's order, on the event loop;
    only `cancel` may be called while another call is running (from the task that
    handles a CancelRequest).
    """

    @property
    def transaction_status(self) -> bytes:
        """IDLE, IN_TRANSACTION or FAILED_TRANSACTION, for ReadyForQuery."""
        ...

    def split(self, sql: str) -> list[str]:
        """The statements of a simple Query message, in order (an empty or
        comment-only query gives []). Raises SqlError 42601 on a syntax error."""
        ...

    async def describe(self, sql: str, parameter_oids: Sequence[int]) -> Description:
        """Parse: the statement's parameter types (those the client left 0 are
        inferred; a client-given OID is kept) and its result columns, without
        running it. Raises SqlError for a statement that cannot be prepared."""
        ...

    async def execute(
        self, sql: str, parameters: Sequence[Any], parameter_oids: Sequence[int]
    ) -> Outcome:
        """Runs one statement with its (decoded) parameters."""
        ...

    async def copy_rows(self, rows: list[list[str | None]]) -> None:
        """Rows of the running COPY FROM STDIN, parsed by the server, in batches."""
        ...

    async def copy_done(self) -> Outcome:
        """The client sent CopyDone: finish the COPY (tag "COPY n")."""
        ...

    async def copy_fail(self, message: str) -> None:
        """The client sent CopyFail (or the connection broke): undo the COPY."""
        ...

    def cancel(self) -> None:
        """A CancelRequest for this session: stop the running statement, which then
        raises SqlError 57014. Does nothing when no statement runs."""
        ...

    async def close(self) -> None:
        """The connection ended: roll back an open transaction, free resources."""
        ...
