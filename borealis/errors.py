"""The error hierarchy, and the one table mapping errors to gRPC status codes and SQLSTATEs.

Subclasses are chosen by what the caller does about them: retry elsewhere or later
(`Unavailable`), fix the request (`InvalidRequest`), refresh its epochs
(`StaleEpoch`), or treat data as lost (`Corruption`). Every error carries
structured context (node, segment, LSN) as keyword fields.
"""

from __future__ import annotations

from typing import Any

import grpc


class BorealisError(Exception):
    """Root of every error Borealis raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        self.message = message
        self.context = context
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if not self.context:
            return self.message
        fields = " ".join(f"{key}={value}" for key, value in self.context.items())
        return f"{self.message} ({fields})"


class InvalidRequest(BorealisError):
    """Malformed input: bad CRC, non-increasing LSN, wrong page size, oversized batch."""


class StaleEpoch(BorealisError):
    """A request's volume or membership epoch is older than the segment's."""


class WriterFenced(StaleEpoch):
    """This writer's volume epoch is no longer the volume's: a newer writer ran
    recovery and storage refuses this one. Every later admit and every commit
    waiting for durability fails with it; the instance must stop serving as the
    writer. A commit that was waiting has an unknown outcome (the new writer's
    recovery may or may not have kept it); nothing later is ever acknowledged.
    SQLSTATE 25006 (read_only_sql_transaction), as PostgreSQL answers a write on
    a server that is no longer the primary."""


class NotFound(BorealisError):
    """The named segment, volume or object does not exist here."""


class AlreadyExists(BorealisError):
    """The thing to create exists with different attributes."""


class Unavailable(BorealisError):
    """Transient: a peer is down, or a segment is not yet complete to the asked LSN."""


class DeadlineExceeded(Unavailable):
    """A long operation (a storage node replacement waiting for hydration) did not
    finish in the time asked; it goes on, and asking again continues it."""


class VersionGone(BorealisError):
    """A page version below the PGMRPL was asked for; it may be garbage-collected."""


class SnapshotTooOld(VersionGone):
    """A read transaction stayed open so long that the old page versions it needed
    were dropped to bound memory (PostgreSQL's "snapshot too old")."""


class SerializationFailure(BorealisError):
    """A transaction read an older snapshot than the newest commit and then tried to
    write (as in PostgreSQL's SERIALIZABLE and Aurora DSQL): retry the transaction."""


class TransactionAborted(InvalidRequest):
    """The session's transaction failed earlier; only ROLLBACK (or COMMIT, which rolls
    back) ends it (PostgreSQL's in_failed_sql_transaction)."""


class SqlError(InvalidRequest):
    """A statement PostgreSQL would refuse, with its own SQLSTATE (42601 syntax,
    23505 unique violation, 0A000 not supported, 57014 cancelled, ...) and, when
    known, the 1-based character position in the statement text."""

    def __init__(
        self,
        message: str,
        sqlstate: str = "42000",
        *,
        position: int | None = None,
        detail: str | None = None,
        hint: str | None = None,
        **context: Any,
    ) -> None:
        assert len(sqlstate) == 5, sqlstate
        super().__init__(message, **context)
        self.sqlstate = sqlstate
        self.position = position
        self.detail = detail
        self.hint = hint


class QueryCanceled(BorealisError):
    """The running statement was cancelled on the client's request (PostgreSQL's
    CancelRequest)."""


class ResourceExhausted(BorealisError):
    """A bounded queue or store is full; retry later."""


class Corruption(BorealisError):
    """Stored data failed its checksum. It is never served; a repair is scheduled."""


class KeyUnavailable(BorealisError):
    """A data key cannot be had or does not fit the data: a missing or unreadable master
    key file, a wrong key, an unreachable KMS. A storage node refuses to start on it."""


class FailpointError(BorealisError):
    """A failpoint set to `error` fired."""


# The one mapping of error kinds to the gRPC status and the PostgreSQL SQLSTATE
# that callers outside this process see. Order matters only for subclasses,
# which must come before their bases.
ERROR_TABLE: tuple[tuple[type[BorealisError], grpc.StatusCode, str], ...] = (
    (TransactionAborted, grpc.StatusCode.INVALID_ARGUMENT, "25P02"),
    # The SQLSTATE is the error's own (SqlError.sqlstate); this one is its default.
    (SqlError, grpc.StatusCode.INVALID_ARGUMENT, "42000"),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, "22000"),
    (WriterFenced, grpc.StatusCode.FAILED_PRECONDITION, "25006"),
    (StaleEpoch, grpc.StatusCode.FAILED_PRECONDITION, "72000"),
    (NotFound, grpc.StatusCode.NOT_FOUND, "42704"),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "42710"),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "57014"),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, "08006"),
    (SnapshotTooOld, grpc.StatusCode.OUT_OF_RANGE, "72000"),
    (VersionGone, grpc.StatusCode.OUT_OF_RANGE, "72000"),
    (SerializationFailure, grpc.StatusCode.ABORTED, "40001"),
    (QueryCanceled, grpc.StatusCode.CANCELLED, "57014"),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "53000"),
    (Corruption, grpc.StatusCode.DATA_LOSS, "XX001"),
    # The data is there but cannot be opened here (SQLSTATE 58000: system error). A
    # storage node refuses to start on it, so it reaches a client only as a failure.
    (KeyUnavailable, grpc.StatusCode.INTERNAL, "58000"),
    (FailpointError, grpc.StatusCode.INTERNAL, "XX000"),
    (BorealisError, grpc.StatusCode.INTERNAL, "XX000"),
)

# A status shared by several rows (INTERNAL) maps back to the last, most general one:
# the client cannot tell which of them the server raised.
_BY_STATUS = {status: kind for kind, status, _ in ERROR_TABLE}


def grpc_status_of(error: BorealisError) -> grpc.StatusCode:
    for kind, status, _ in ERROR_TABLE:
        if isinstance(error, kind):
            return status
    raise AssertionError("BorealisError is the last row of ERROR_TABLE")


def sqlstate_of(error: BorealisError) -> str:
    if isinstance(error, SqlError):
        return error.sqlstate
    for kind, _, sqlstate in ERROR_TABLE:
        if isinstance(error, kind):
            return sqlstate
    raise AssertionError("BorealisError is the last row of ERROR_TABLE")


def from_grpc(error: grpc.RpcError, **context: Any) -> BorealisError:
    """The Borealis error a failed call stands for, on the client side."""
    code = error.code()
    details = error.details() or code.name
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Unavailable(details, status=code.name, **context)
    kind = _BY_STATUS.get(code, BorealisError)
    return kind(details, **context)
