"""Client sessions on SQLite connections owned by worker threads, used from an event loop.

Threads. One writing connection (locking_mode=EXCLUSIVE: no VFS callback on a
cache-hot statement) on the writer thread, and `readers` read-only connections
(locking_mode=NORMAL: every read transaction pins the newest read point) on one
thread each. SQLite is only ever called on these threads; the event loop talks to
them through a job queue per thread and futures (as aiosqlite does). The thread
count is 1 + readers whatever the number of sessions: a Session is a small object
on the event loop that uses a connection per transaction.

Autocommit statements are pipelined. A single statement outside an explicit
transaction is a whole transaction on any connection, so it is queued on a
connection that no session holds, without waiting for the statements before it:
the thread runs queued jobs back to back and hands back their results in batches.
Reads go to the connection with the shortest queue among the readers and the
writer (the writer answers cache-hot reads fastest: no lock callbacks, and its page
cache is never dropped); writes go to the writer. A worker's queue is bounded: a
statement waits (on the event loop) for room.

Explicit transactions hold their connection. A deferred BEGIN is held back until
the transaction's first statement: a read takes a reader, a write (or BEGIN
IMMEDIATE / EXCLUSIVE) the writer, and the session holds it until COMMIT or
ROLLBACK; nothing else is queued on a held connection. Scripts (several statements
in one string, or ones that start a transaction) are run like a transaction too.

Read-then-write. A statement routed to a reader that writes after all (WITH ..
INSERT, a script) fails there with SQLITE_READONLY before any change. Outside a
transaction, or before any result of the transaction was released, it simply runs
again on the writer. Inside a transaction that read at read point R, the
transaction moves to the writer if R is still the newest commit, and fails with
SerializationFailure (SQLSTATE 40001) otherwise. Moving is safe: only the writer
commits, and while the session holds the writer nothing else commits, so the rest
of the transaction sees exactly R: the transaction is as if it ran at once at R.
(Savepoints of the reader transaction do not move with it.) Clients that mean to
write say BEGIN IMMEDIATE and never get 40001 from this.

Durability (DESIGN.md section 4, steps 5-6). Every result, and every error SQLite
answered, is released only after `wait_durable(lsn_seen_max)` of the connection
that produced it: the highest LSN the statement could have seen, which for a
COMMIT (or an autocommit write) is its CPL. The wait runs on the event loop after
the thread is done with the job, so the writer commits the next transactions
meanwhile (group commit). A statement inside a transaction waits while its session
holds the connection: the first statement of a write transaction after another
commit waits for that commit to be durable (it may have read it).

Durable reads. When storage cannot make commits durable (an AZ and one more node
down), a read that saw a commit still in flight would wait for the outage to end.
An autocommit statement that committed nothing and is not released within
DURABLE_READ_AFTER_S runs again on a reader connection at the VDL instead (the
writer's engine keeps the page versions above the VDL, vfs.VolumeState): it sees
every acknowledged commit, and needs no wait. If those versions were dropped
(SnapshotTooOld) or the statement writes after all, it waits as before.

Errors. SQLite's own errors become StatementError carrying the apsw exception
(`sqlite_error`), for the PostgreSQL layer to map (constraint violations to
23xxx, ...). BorealisErrors raised under SQLite (Unavailable from a page read or
admit, SnapshotTooOld) pass through unchanged. As in PostgreSQL, an error inside
an explicit transaction aborts it: the session refuses every statement but
ROLLBACK, ROLLBACK TO and COMMIT (which rolls back) with TransactionAborted.

Capacity. The number of reader connections changes at run time (`set_readers`, for
the instance's capacity, compute_node/capacity.py). New readers open on threads of
their own and take work once open. A reader to remove is drained: it leaves the
set that statements and transactions are placed on at once, so it takes no new
work; the statements already queued on it run to their end, and a transaction
holding it goes on undisturbed until its session gives the connection back. Then
its thread closes the connection and ends.

Connection state is per connection, not per session: PRAGMAs that set connection
options, and TEMP tables, are seen by every session that uses the connection. The
PostgreSQL layer must not forward session settings as PRAGMAs.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, TypeVar

import apsw

from borealis.errors import (
    BorealisError,
    InvalidRequest,
    QueryCanceled,
    SerializationFailure,
    SnapshotTooOld,
    TransactionAborted,
)
from borealis.ids import LSN_NONE, Lsn
from compute_node.engine.connection import (
    CACHE_PAGES_DEFAULT,
    EngineConnection,
    LockingMode,
    open_connection,
)
from compute_node.engine.functions import SessionValues, session_values
from compute_node.engine.source import PageSource
from compute_node.engine.vfs import VERSIONS_BYTES_MAX_DEFAULT, VolumeFile, VolumeVFS

T = TypeVar("T")

READERS_DEFAULT = 2
# Queued autocommit statements per connection. Enough to keep a thread busy while
# the event loop is elsewhere; more only adds latency.
WORKER_JOBS_MAX = 32
# Autocommit reads are queued on the writer while its queue is shorter than this,
# else on the reader with the shortest queue. Cache-hot point selects measured by
# bench/sessions.py, writer first against readers only: 52k/s against 21k/s with
# 8 sessions, 17k/s against 7.5k/s while another session inserts. The writer makes
# no VFS callback (a reader makes 7: lock, unlock, page 1's change counter) and its
# page cache is never dropped (a reader's is whenever the read point moved), and
# more threads mostly add GIL hand-offs. Readers still serve explicit read
# transactions (no writer held for them), the overflow, and all reads while a write
# transaction holds the writer.
WRITER_READS_MAX = 16
# A thread hands back at most this many results per event loop wake-up.
SETTLE_BATCH_MAX = 16
# A read not released within this (its durability wait is normally a few
# milliseconds) runs again at the VDL: see "Durable reads" above.
DURABLE_READ_AFTER_S = 0.5

Params = Sequence[Any] | Mapping[str, Any]
WaitDurable = Callable[[Lsn], Awaitable[None]]


class StatementError(BorealisError):
    """SQLite refused the statement (constraint, syntax, ...). `sqlite_error` is the
    apsw exception; the PostgreSQL layer maps its class and extended code to a
    SQLSTATE. A generic BorealisError until then (SQLSTATE XX000)."""

    def __init__(
        self, message: str, sqlite_error: apsw.Error | None = None, **context: Any
    ) -> None:
        super().__init__(message, **context)
        self.sqlite_error = sqlite_error


class Result(NamedTuple):
    """The outcome of one statement (of a script: its last statement)."""

    columns: tuple[str, ...]
    decltypes: tuple[str | None, ...]
    """The columns' declared types (None for expressions), for the protocol layer."""
    rows: list[tuple[Any, ...]]
    rowcount: int
    """Rows returned if the statement returns columns, else rows changed (INSERT,
    UPDATE, DELETE; 0 for DDL and transaction control)."""


EMPTY_RESULT = Result((), (), [], 0)


# -- statement classification ----------------------------------------------------------


class Control(Enum):
    BEGIN = "begin"
    BEGIN_WRITE = "begin_write"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    ROLLBACK_TO = "rollback_to"


# Only a lone transaction-control statement (no comments, no second statement) is
# handled by the session itself; anything else runs on a connection, and the
# session follows the connection's transaction state afterwards.
_CONTROL = re.compile(
    r"""\s*(?:
        (?P<begin>BEGIN(?:\s+(?P<mode>DEFERRED|IMMEDIATE|EXCLUSIVE))?(?:\s+TRANSACTION)?)
      | (?P<commit>(?:COMMIT|END)(?:\s+TRANSACTION)?)
      | (?P<rollback_to>ROLLBACK(?:\s+TRANSACTION)?\s+TO(?:\s+SAVEPOINT)?\s+
            (?:"[^"]*"|`[^`]*`|\[[^\]]*\]|[^\s;"`\[]+))
      | (?P<rollback>ROLLBACK(?:\s+TRANSACTION)?)
    )\s*;?\s*""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_FIRST_WORD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/)\s*)*([A-Za-z]+)", re.DOTALL)
# Statements that may run on a read-only connection. A WITH can still write; the
# reader then refuses it before any change and the statement moves to the writer.
# Transaction control never writes by itself: it runs where the transaction is.
_READ_WORDS = frozenset(
    {"SELECT", "VALUES", "WITH", "EXPLAIN", "SAVEPOINT", "RELEASE", "COMMIT", "END", "ROLLBACK"}
)


def control_of(sql: str) -> Control | None:
    """The transaction-control statement `sql` is, if it is exactly one."""
    match = _CONTROL.fullmatch(sql)
    if match is None:
        return None
    if match["begin"]:
        mode = (match["mode"] or "").upper()
        return Control.BEGIN_WRITE if mode in ("IMMEDIATE", "EXCLUSIVE") else Control.BEGIN
    if match["commit"]:
        return Control.COMMIT
    if match["rollback_to"]:
        return Control.ROLLBACK_TO
    return Control.ROLLBACK


def first_word(sql: str) -> str:
    """The statement's first keyword, upper case ("" if none)."""
    match = _FIRST_WORD.match(sql)
    return "" if match is None else match[1].upper()


def reads_only(sql: str) -> bool:
    """Whether `sql` may run on a reader (a guess on its first word; see _READ_WORDS)."""
    return first_word(sql) in _READ_WORDS


def _maybe_several(sql: str) -> bool:
    # A ';' inside a string literal only costs the slower, traced path.
    return ";" in sql.rstrip().rstrip(";")


class Kind(NamedTuple):
    """What the session needs to know of a statement before running it."""

    control: Control | None
    read: bool
    """It may run on a reader (see reads_only)."""
    pipelined: bool
    """Outside a transaction, it is a whole transaction of its own (one statement
    that opens no transaction), so it can be queued on any free connection."""


@functools.lru_cache(maxsize=4096)
def kind_of(sql: str) -> Kind:
    # Cached: clients repeat the same statement texts, and the regexes cost a few
    # microseconds of the event loop's time per statement.
    word = first_word(sql)
    pipelined = word not in ("BEGIN", "SAVEPOINT") and not _maybe_several(sql)
    return Kind(control_of(sql), word in _READ_WORDS, pipelined)


# -- the thread side ------------------------------------------------------------------


class _ReadOnly(Exception):
    """A reader refused to write: the statement must run on the writer."""


class _Outcome(NamedTuple):
    """A job's result and the connection's state after it, read on its thread."""

    result: Result | None
    error: BaseException | None
    in_transaction: bool
    read_point: Lsn | None
    lsn_seen_max: Lsn
    # The job committed a transaction (a write, not a read).
    committed: bool = False


class _Connection:
    """An EngineConnection and what runs on it. Used only on its worker's thread."""

    def __init__(
        self,
        connection: EngineConnection,
        state_newest: Callable[[], Lsn],
        read_only_engine: bool = False,
    ) -> None:
        self.connection = connection
        # On a read-only engine (a reader instance) no connection writes, so a
        # write refused by SQLite is the statement's error, not a move to the writer.
        self._read_only_engine = read_only_engine
        self.sqlite = connection.sqlite
        self.file: VolumeFile = connection.file
        self.cursor = connection.sqlite.cursor()
        self._lsn_newest = state_newest
        # What the catalog functions (current_user, current_setting) read: the
        # values of the session whose job runs, set before each job.
        self._function_values = session_values(connection.sqlite)
        # Set when the connection's state is unknown (a ROLLBACK failed): the
        # worker closes it, which ends any transaction, and opens a new one.
        self.reopen = False

    def run(
        self,
        sql: str,
        params: Params | list[Params],
        *,
        many: bool = False,
        begin: str | None = None,
        read_point: Lsn | None = None,
        autocommit: bool = False,
        durable_read: bool = False,
    ) -> _Outcome:
        """Runs `sql` (after `begin`, if given, in the same job). With `read_point`,
        only if it is still the newest commit: a transaction moved from a reader.
        With `autocommit`, the connection must be outside a transaction before and
        after: other sessions' statements are queued behind this one."""
        result: Result | None = None
        error: BaseException | None = None
        commits_before = self.file.commits
        self.file.durable_read = durable_read
        try:
            if read_point is not None and read_point != self._lsn_newest():
                raise SerializationFailure(
                    "could not serialize access: the transaction read an older snapshot",
                    read_point=read_point,
                    lsn_newest=self._lsn_newest(),
                )
            if begin is not None:
                self.cursor.execute(begin)
            result = self._execute(sql, params, many)
        except BaseException as raised:  # noqa: BLE001 - handed to the session
            error = self._map_error(raised)
        finally:
            self.file.durable_read = False
        if autocommit and self.sqlite.in_transaction:
            # kind_of() lets no transaction-opening statement through; if one
            # slips by anyway, it must not capture the next session's statements.
            self.rollback()
            result, error = None, StatementError("a pipelined statement opened a transaction")
        outcome = self._outcome(result, error)
        if durable_read:
            # It read at the VDL: nothing it saw needs waiting for.
            return outcome._replace(lsn_seen_max=LSN_NONE)
        return outcome._replace(committed=self.file.commits != commits_before)

    def use_values(self, values: SessionValues) -> None:
        target = self._function_values
        target.user = values.user
        target.database = values.database
        target.backend_pid = values.backend_pid
        # The session's own dict: set_config() changes it in place.
        target.settings = values.settings

    def commit(self, sql: str) -> _Outcome:
        """Runs a COMMIT; if it failed and left the transaction open (SQLITE_BUSY),
        rolls back: a failed COMMIT ends the transaction, as in PostgreSQL."""
        outcome = self.run(sql, ())
        if outcome.error is not None and self.sqlite.in_transaction:
            self.rollback()
            return self._outcome(None, outcome.error)
        return outcome

    def rollback(self) -> _Outcome:
        if self.sqlite.in_transaction:
            try:
                self.sqlite.execute("ROLLBACK")
            except apsw.Error:
                self.reopen = True
        return self._outcome(EMPTY_RESULT, None)

    def _outcome(self, result: Result | None, error: BaseException | None) -> _Outcome:
        file = self.file
        # A connection about to be reopened is in no transaction any more.
        in_transaction = self.sqlite.in_transaction and not self.reopen
        return _Outcome(result, error, in_transaction, file.read_point, file.lsn_seen_max)

    def _map_error(self, error: BaseException) -> BaseException:
        if (
            isinstance(error, apsw.ReadOnlyError)
            and not self.file.writable
            and not self._read_only_engine
        ):
            return _ReadOnly()
        if isinstance(error, apsw.InterruptError):
            return QueryCanceled("canceling statement due to user request")
        if isinstance(error, apsw.BusyError):
            failure = self.connection.serialization_failure(error)
            if failure is not None:
                return failure
        if isinstance(error, apsw.Error):
            mapped = StatementError(str(error), error, kind=type(error).__name__)
            mapped.__cause__ = error
            return mapped
        return error

    def _execute(self, sql: str, params: Params | list[Params], many: bool) -> Result:
        sqlite = self.sqlite
        changes_before = sqlite.total_changes()
        if many or _maybe_several(sql):
            return self._execute_traced(sql, params, many, changes_before)
        cursor = self.cursor
        cursor.execute(sql, params)  # type: ignore[arg-type]
        try:
            # Valid while the statement has a row pending: the fast path.
            description = cursor.get_description()
        except apsw.ExecutionCompleteError:
            # No row (or not a query): ask again without running it.
            description = self._description_of(sql, params)
            rows: list[tuple[Any, ...]] = []
        else:
            rows = cursor.fetchall()
        return self._result(description, rows, sqlite.total_changes() - changes_before)

    def _execute_traced(
        self, sql: str, params: Params | list[Params], many: bool, changes_before: int
    ) -> Result:
        """A script or executemany: the last statement's columns; rows of the last
        statement (of every execution for executemany, for RETURNING)."""
        cursor = self.cursor
        current: list[Any] = [(), []]

        def trace(traced: apsw.Cursor, statement: str, bindings: object) -> bool:
            description = traced.get_description()
            if not many or description != current[0]:
                current[0], current[1] = description, []
            return True

        cursor.exec_trace = trace
        try:
            if many:
                cursor.executemany(sql, params)  # type: ignore[arg-type]
            else:
                cursor.execute(sql, params)  # type: ignore[arg-type]
            for row in cursor:
                current[1].append(row)
        finally:
            cursor.exec_trace = None
        return self._result(current[0], current[1], self.sqlite.total_changes() - changes_before)

    def _description_of(self, sql: str, params: Params | list[Params]) -> tuple[Any, ...]:
        found: list[Any] = [()]

        def trace(traced: apsw.Cursor, statement: str, bindings: object) -> bool:
            found[0] = traced.get_description()
            return False  # prepared, not run

        cursor = self.cursor
        cursor.exec_trace = trace
        try:
            cursor.execute(sql, params)  # type: ignore[arg-type]
        except apsw.ExecTraceAbort:
            pass
        finally:
            cursor.exec_trace = None
        return found[0]

    @staticmethod
    def _result(description: tuple[Any, ...], rows: list[tuple[Any, ...]], changes: int) -> Result:
        if not description:
            return Result((), (), rows, changes)
        columns = tuple(column[0] for column in description)
        decltypes = tuple(column[1] for column in description)
        return Result(columns, decltypes, rows, len(rows))


class _Worker:
    """A thread that owns one SQLite connection and runs jobs from its queue.

    The event loop side (`submit`, `owner`, `jobs_queued`) is used only on the loop;
    the thread runs `job(connection)` in FIFO order and hands results back with
    loop.call_soon_threadsafe, several per wake-up when jobs are queued.
    """

    def __init__(
        self,
        name: str,
        writer: bool,
        connect: Callable[[], _Connection],
        loop: asyncio.AbstractEventLoop,
        on_settled: Callable[[], None],
    ) -> None:
        self.name = name
        self.writer = writer
        # The session whose explicit transaction holds the connection: while set,
        # only its jobs are queued here.
        self.owner: Session | None = None
        self.jobs_queued = 0
        self._connect = connect
        self._loop = loop
        self._on_settled = on_settled
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # The session whose job runs on the thread now, and the connection it runs
        # on, for interrupt(); both change only under the lock.
        self._running_lock = threading.Lock()
        self._running: Session | None = None
        self._running_sqlite: apsw.Connection | None = None
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._stop_sent = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.thread_id = self._thread.ident

    def submit(
        self, job: Callable[[_Connection], T], session: Session | None = None
    ) -> asyncio.Future[T]:
        """Queues `job` (a statement of `session`, if given); its future. A job runs
        to its end even if the future's awaiter is cancelled (see Session._abandon)."""
        future: asyncio.Future[T] = self._loop.create_future()
        self.jobs_queued += 1
        self._jobs.put((job, future, session))
        return future

    def interrupt(self, session: Session) -> None:
        """Interrupts the statement running on the thread if it is `session`'s.
        Callable from any thread. SQLite clears an interrupt once no statement
        runs, so a later job of another session is never hit by it."""
        with self._running_lock:
            if self._running is session and self._running_sqlite is not None:
                self._running_sqlite.interrupt()

    async def stop(self) -> None:
        """Ends the thread after the jobs queued before this call (idempotent)."""
        if not self._stop_sent:
            self._stop_sent = True
            self._jobs.put(None)
        await self._stopped
        self._thread.join()

    def _settle_all(
        self, settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        for future, value, error in settled:
            self.jobs_queued -= 1
            if future.done():
                continue  # its awaiter was cancelled
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        if self.owner is None:
            # Room in the queue, for statements waiting to be pipelined (a held
            # connection takes none of them).
            self._on_settled()

    # -- on the thread -----------------------------------------------------------------

    def _run(self) -> None:
        connection: _Connection | None = None
        open_error: BaseException | None = None
        try:
            connection = self._connect()
        except BaseException as error:  # noqa: BLE001 - reported to every job
            open_error = error
        jobs = self._jobs
        settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        while (item := jobs.get()) is not None:
            job, future, session = item
            try:
                if connection is None:
                    assert open_error is not None
                    raise open_error
                if session is not None:
                    if session.cancel_requested:
                        raise QueryCanceled("canceling statement due to user request")
                    if session.values is not None:
                        connection.use_values(session.values)
                with self._running_lock:
                    self._running, self._running_sqlite = session, connection.sqlite
                try:
                    settled.append((future, job(connection), None))
                finally:
                    with self._running_lock:
                        self._running = self._running_sqlite = None
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                settled.append((future, None, error))
            if connection is not None and (connection.reopen or connection.file.broken):
                # A commit failed at its commit point (SQLite's cache is ahead of
                # the volume), or a rollback failed. The error went to the
                # session; start afresh.
                connection.connection.close()
                connection = None
                try:
                    connection = self._connect()
                except BaseException as error:  # noqa: BLE001 - reported to every job
                    open_error = error
            # One wake-up of the event loop for all results ready now.
            if len(settled) >= SETTLE_BATCH_MAX or jobs.empty():
                self._loop.call_soon_threadsafe(self._settle_all, settled)
                settled = []
        if settled:
            self._loop.call_soon_threadsafe(self._settle_all, settled)
        if connection is not None:
            connection.connection.close()
        self._loop.call_soon_threadsafe(self._stopped.set_result, None)


_Job = tuple[Callable[[_Connection], Any], "asyncio.Future[Any]", "Session | None"]


@dataclass(slots=True)
class EngineStats:
    """Counters for tests, benchmarks and metrics."""

    statements_writer: int = 0
    statements_reader: int = 0
    moved_to_writer: int = 0
    """Statements or transactions that started on a reader and moved to the writer."""
    serialization_failures: int = 0
    durability_waits: int = 0
    """wait_durable calls (results already known durable skip the call)."""
    durable_reads: int = 0
    """Reads answered at the VDL because their durability wait took too long."""
    statements_finished: int = 0
    """Statements answered (results and errors alike) since the engine opened."""
    readers_added: int = 0
    readers_drained: int = 0
    """Reader connections added and drained by set_readers."""


class EngineLoad(NamedTuple):
    """What the engine is doing now, for the capacity signals."""

    active_sessions: int
    """Sessions running a statement (queued, running, or waiting for durability)."""
    queued_statements: int
    """Statements waiting for a connection or behind another job in a worker queue."""
    statements_total: int
    """Statements finished since the engine opened."""


class Engine:
    """SQLite on one volume: the writer and reader threads and their sessions.

    Create with `await Engine.open(...)` on the event loop that will use it.
    """

    def __init__(
        self, vfs: VolumeVFS, wait_durable: WaitDurable, jobs_max: int, writer_reads_max: int
    ) -> None:
        assert jobs_max > 0, jobs_max
        assert 0 <= writer_reads_max <= jobs_max, (writer_reads_max, jobs_max)
        self.vfs = vfs
        self._wait_durable = wait_durable
        self._jobs_max = jobs_max
        self._writer_reads_max = writer_reads_max
        self._writer: _Worker | None = None
        # The readers that take new work, and the ones draining (see "Capacity").
        self._readers: list[_Worker] = []
        self._draining: set[_Worker] = set()
        # Opens one more reader (set by open()); numbers name the reader threads.
        self._new_reader: Callable[[str], _Worker] | None = None
        self._reader_numbers = itertools.count()
        self._resizing = asyncio.Lock()
        # Sessions inside a statement, and statements waiting for a connection or
        # for room in a queue (see load()).
        self._statements_active = 0
        self._statements_waiting = 0
        # Sessions waiting for a connection to be given back or a queue to drain;
        # all are woken and look again (few wait at a time: sessions are bounded by
        # the protocol layer's connection limit).
        self._waiters: list[asyncio.Future[None]] = []
        # The highest LSN a wait_durable call returned for: a result at or below it
        # is released without another call.
        self._lsn_durable: Lsn = LSN_NONE
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = EngineStats()

    @classmethod
    async def open(
        cls,
        source: PageSource,
        wait_durable: WaitDurable,
        *,
        readers: int = READERS_DEFAULT,
        writer_cache_pages: int = CACHE_PAGES_DEFAULT,
        reader_cache_pages: int = CACHE_PAGES_DEFAULT,
        versions_bytes_max: int = VERSIONS_BYTES_MAX_DEFAULT,
        file_class: type[VolumeFile] = VolumeFile,
        jobs_max: int = WORKER_JOBS_MAX,
        writer_reads_max: int = WRITER_READS_MAX,
        read_only: bool = False,
    ) -> Engine:
        """Registers a VFS for `source` and opens the writer and `readers` reading
        connections, each on its own thread. `wait_durable(lsn)` returns once
        VDL >= lsn (or raises when it cannot get there). An autocommit read is
        queued on the writer while fewer than `writer_reads_max` jobs are queued
        there, else on a reader (0: reads go to readers).

        `read_only` (a reader instance): the "writer" connection is opened
        read-only too, in NORMAL locking mode like the readers, so nothing ever
        reaches the volume as a write and every read transaction pins the newest
        read point the source advanced to (VolumeState.advance); SQLite's refusal
        to write is the statement's error (SQLSTATE 25006 in the SQL layer)."""
        assert readers >= 0, readers
        loop = asyncio.get_running_loop()
        vfs = VolumeVFS(source, versions_bytes_max=versions_bytes_max, file_class=file_class)
        engine = cls(vfs, wait_durable, jobs_max, writer_reads_max)

        def connect(writable: bool, cache_pages: int) -> Callable[[], _Connection]:
            writable = writable and not read_only
            mode = LockingMode.EXCLUSIVE if writable else LockingMode.NORMAL

            def opened() -> _Connection:
                connection = open_connection(
                    vfs, writable=writable, locking_mode=mode, cache_pages=cache_pages
                )
                return _Connection(connection, lambda: vfs.state.lsn_newest, read_only)

            return opened

        def worker(name: str, writable: bool, cache_pages: int) -> _Worker:
            return _Worker(name, writable, connect(writable, cache_pages), loop, engine._wake)

        engine._new_reader = functools.partial(
            worker, writable=False, cache_pages=reader_cache_pages
        )
        writer = worker("sqlite-writer", True, writer_cache_pages)
        try:
            # The writer opens first: it sets the page size of a new volume.
            await writer.submit(_opened)
        except BaseException:
            await writer.stop()
            vfs.unregister()
            raise
        engine._writer = writer
        try:
            engine._readers = await engine._open_readers(readers)
        except BaseException:
            await writer.stop()
            vfs.unregister()
            raise
        return engine

    def session(self) -> Session:
        if self._closed:
            raise InvalidRequest("the engine is closed")
        session = Session(self)
        self._sessions.add(session)
        return session

    @property
    def thread_ids(self) -> tuple[int | None, ...]:
        return tuple(worker.thread_id for worker in self._workers())

    @property
    def readers(self) -> int:
        """Reader connections taking new work (draining ones are not counted)."""
        return len(self._readers)

    @property
    def readers_draining(self) -> int:
        return len(self._draining)

    def load(self) -> EngineLoad:
        queued_in_workers = sum(
            max(0, worker.jobs_queued - 1) for worker in [*self._workers(), *self._draining]
        )
        return EngineLoad(
            active_sessions=self._statements_active,
            queued_statements=self._statements_waiting + queued_in_workers,
            statements_total=self.stats.statements_finished,
        )

    async def set_readers(self, readers: int) -> None:
        """Opens or drains reader connections until `readers` take new work (see
        "Capacity" in the module docstring). Returns once new readers are open; a
        drained reader closes later, when it is idle and no session holds it."""
        assert readers >= 0, readers
        async with self._resizing:
            if self._closed:
                raise InvalidRequest("the engine is closed")
            count = len(self._readers)
            if readers > count:
                opened = await self._open_readers(readers - count)
                if self._closed:
                    for worker in opened:
                        await worker.stop()
                    raise InvalidRequest("the engine is closed")
                self._readers.extend(opened)
                self.stats.readers_added += len(opened)
                # Statements waiting for a connection look again.
                self._wake()
            elif readers < count:
                self._drain_readers(count - readers)

    async def close(self) -> None:
        """Closes every session (rolling back open transactions), then the
        connections and their threads."""
        if self._closed:
            return
        self._closed = True
        # Statements waiting for a connection fail now (see _wait), so that every
        # session's lock comes free; running statements finish.
        self._wake()
        for session in list(self._sessions):
            await session.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        # Every session is closed, so no draining reader is held any more.
        for worker in [*reversed(self._workers()), *self._draining]:
            await worker.stop()
        self._draining.clear()
        self.vfs.unregister()

    def _workers(self) -> list[_Worker]:
        assert self._writer is not None
        return [self._writer, *self._readers]

    # -- capacity ----------------------------------------------------------------------

    async def _open_readers(self, count: int) -> list[_Worker]:
        """`count` new reader connections, open; none if any failed to open."""
        assert self._new_reader is not None
        workers = [
            self._new_reader(f"sqlite-reader-{next(self._reader_numbers)}") for _ in range(count)
        ]
        try:
            await asyncio.gather(*(worker.submit(_opened) for worker in workers))
        except BaseException:
            for worker in workers:
                await worker.stop()
            raise
        return workers

    def _drain_readers(self, count: int) -> None:
        """Takes `count` readers out of use, the least busy first: free ones with
        the shortest queues before ones a transaction holds."""
        assert 0 < count <= len(self._readers), (count, len(self._readers))
        by_busy = sorted(self._readers, key=lambda each: (each.owner is not None, each.jobs_queued))
        for worker in by_busy[:count]:
            self._readers.remove(worker)
            self._draining.add(worker)
            self.stats.readers_drained += 1
            self._retire_if_free(worker)

    def _retire_if_free(self, worker: _Worker) -> None:
        """Stops a draining reader once no session holds it. Its stop is queued
        behind the jobs already queued there, which run to their end first."""
        if worker in self._draining and worker.owner is None:
            self._draining.discard(worker)
            self._spawn(worker.stop())

    # -- for sessions ----------------------------------------------------------------

    async def _lease(self, session: Session, writer: bool) -> _Worker:
        """A connection for `session`'s explicit transaction, held until given back."""
        assert self._writer is not None
        while True:
            if writer or not self._readers:
                free = [self._writer] if self._writer.owner is None else []
            else:
                free = [reader for reader in self._readers if reader.owner is None]
            if free:
                worker = min(free, key=_queue_length)
                worker.owner = session
                return worker
            await self._wait()

    async def _pipeline(self, read: bool) -> _Worker:
        """A connection to queue an autocommit statement on (see the module
        docstring): one no session holds, with room in its queue."""
        writer = self._writer
        assert writer is not None
        jobs_max = self._jobs_max
        while True:
            writer_free = writer.owner is None
            if writer_free and writer.jobs_queued < (self._writer_reads_max if read else jobs_max):
                return writer
            if read:
                best = self._reader_free()
                if best is not None:
                    return best
                if writer_free and writer.jobs_queued < jobs_max:
                    return writer
            await self._wait()

    async def _pipeline_reader(self) -> _Worker | None:
        """A reader connection to queue an autocommit read on (a durable read);
        None if the engine has no reader (all were drained meanwhile)."""
        while (reader := self._reader_free()) is None:
            if not self._readers:
                return None
            await self._wait()
        return reader

    def _reader_free(self) -> _Worker | None:
        """The reader no session holds with the shortest queue that has room."""
        best: _Worker | None = None
        for reader in self._readers:
            if (
                reader.owner is None
                and reader.jobs_queued < self._jobs_max
                and (best is None or reader.jobs_queued < best.jobs_queued)
            ):
                best = reader
        return best

    def _give_back(self, worker: _Worker) -> None:
        worker.owner = None
        self._retire_if_free(worker)
        self._wake()

    async def _wait(self) -> None:
        if self._closed:
            raise InvalidRequest("the engine is closed")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._statements_waiting += 1
        try:
            await waiter
        finally:
            self._statements_waiting -= 1
        if self._closed:
            raise InvalidRequest("the engine is closed")

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _durable(self, lsn: Lsn) -> None:
        if lsn <= self._lsn_durable:
            return
        self.stats.durability_waits += 1
        await self._wait_durable(lsn)
        self._lsn_durable = max(self._lsn_durable, lsn)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _queue_length(worker: _Worker) -> int:
    return worker.jobs_queued


def _opened(connection: _Connection) -> None:
    """The first job of a new worker: returns once its connection is open (a failure
    to open is raised to it)."""


class Session:
    """One client's session. Its statements run one at a time, in order.

    Transaction state for the protocol layer (PostgreSQL's ReadyForQuery status):
    `in_transaction` ('T'), `transaction_failed` ('E').
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()
        # Inside an explicit transaction (BEGIN, or a script that left one open).
        self._transaction = False
        self._failed = False
        # The connection holding this session's transaction (owner is self).
        self._worker: _Worker | None = None
        # A deferred BEGIN not sent yet: the first statement chooses the connection.
        self._begin: str | None = None
        self._begin_writer = False
        # The read point of the session's transaction on a reader, once it read.
        self._read_point: Lsn | None = None
        self._closed = False
        # The worker the session's current statement is queued on, for cancel().
        self._statement_worker: _Worker | None = None
        # Set by cancel(), read by the worker thread before it starts a job of this
        # session, cleared when the next statement starts.
        self.cancel_requested = False
        # The session's user, database and settings for the catalog functions (set
        # by the PostgreSQL layer; None leaves the connection's as they are).
        self.values: SessionValues | None = None

    @property
    def in_transaction(self) -> bool:
        return self._transaction

    @property
    def transaction_failed(self) -> bool:
        return self._failed

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Runs `sql` (one statement, or a script: the last statement's result) and
        returns once its result may be released (durable)."""
        return await self._statement(sql, params, many=False)

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Result:
        """Runs `sql` once per parameter set, on the writer, in one job. Outside a
        transaction each execution commits on its own, as in SQLite and psycopg:
        wrap bulk loads in BEGIN IMMEDIATE .. COMMIT to make them one commit group."""
        # Materialised here: the worker thread must not run the caller's generator.
        return await self._statement(sql, list(seq_of_params), many=True)

    def fail_transaction(self) -> None:
        """A statement of the open transaction failed before reaching SQLite (the
        SQL layer refused it): as in PostgreSQL, the transaction is aborted."""
        if self._transaction:
            self._failed = True

    def cancel(self) -> None:
        """Stops the session's running statement (queued or running), which then
        raises QueryCanceled; does nothing when no statement runs."""
        worker = self._statement_worker
        if worker is None:
            return
        self.cancel_requested = True
        worker.interrupt(self)

    async def close(self) -> None:
        """Rolls back an open transaction and gives its connection back."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end_transaction()
            if self._worker is not None:
                await self._give_up_connection()
            self._engine._sessions.discard(self)

    # -- statements --------------------------------------------------------------------

    async def _statement(self, sql: str, params: Params | list[Params], many: bool) -> Result:
        async with self._lock:
            self.cancel_requested = False
            if self._closed or self._engine._closed:
                raise InvalidRequest("the session is closed")
            engine = self._engine
            engine._statements_active += 1
            try:
                return await self._dispatch(sql, params, many)
            finally:
                engine._statements_active -= 1
                engine.stats.statements_finished += 1

    async def _dispatch(self, sql: str, params: Params | list[Params], many: bool) -> Result:
        """Runs one statement; the caller holds the session's lock."""
        kind = kind_of(sql)
        if kind.control is not None and not many:
            return await self._control(kind.control, sql)
        if self._failed:
            raise TransactionAborted(
                "current transaction is aborted, commands ignored until end of transaction block"
            )
        read = kind.read and not many
        if not self._transaction and kind.pipelined:
            return await self._autocommit(sql, params, many, read)
        return await self._in_transaction(sql, params, many, read)

    async def _control(self, control: Control, sql: str) -> Result:
        if control is Control.BEGIN or control is Control.BEGIN_WRITE:
            if self._transaction:
                raise StatementError("cannot start a transaction within a transaction")
            self._transaction = True
            self._begin = sql
            self._begin_writer = control is Control.BEGIN_WRITE
            return EMPTY_RESULT
        if control is Control.ROLLBACK_TO:
            if self._worker is None:
                raise StatementError("no such savepoint")
            # On the transaction's connection, whichever it is; ends the failed
            # state when the savepoint exists (as in PostgreSQL).
            outcome = await self._run_on(self._worker, sql, (), many=False)
            result = await self._finish(outcome, explicit=True)
            self._failed = False
            return result
        if not self._transaction:
            word = "commit" if control is Control.COMMIT else "rollback"
            raise StatementError(f"cannot {word} - no transaction is active")
        rollback = control is Control.ROLLBACK or self._failed
        self._end_transaction()
        if self._worker is None:
            return EMPTY_RESULT  # the BEGIN never reached a connection, or it failed
        if rollback:
            await self._give_up_connection()
            return EMPTY_RESULT
        outcome = await self._call(self._worker, lambda connection: connection.commit(sql))
        assert not outcome.in_transaction
        self._release()
        # The connection is free again (the writer commits the next transactions
        # meanwhile); the answer waits for this commit's CPL.
        await self._engine._durable(outcome.lsn_seen_max)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    async def _autocommit(
        self, sql: str, params: Params | list[Params], many: bool, read: bool
    ) -> Result:
        """One statement that is its own transaction, queued without holding a
        connection. Cancelling its caller does not stop it."""
        engine = self._engine
        worker = await engine._pipeline(read)
        outcome = await self._queue(worker, sql, params, many)
        if isinstance(outcome.error, _ReadOnly):
            engine.stats.moved_to_writer += 1
            worker = await engine._pipeline(read=False)
            outcome = await self._queue(worker, sql, params, many)
        assert not outcome.in_transaction
        if (
            outcome.committed
            or outcome.lsn_seen_max <= engine._lsn_durable
            or engine.vfs.state.vdl is None
            or not engine._readers
        ):
            await engine._durable(outcome.lsn_seen_max)
        else:
            outcome = await self._release_read(outcome, sql, params, many)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    async def _release_read(
        self, outcome: _Outcome, sql: str, params: Params | list[Params], many: bool
    ) -> _Outcome:
        """A read's outcome once what it saw is durable, or the same read run again
        at the VDL if that takes too long (see "Durable reads")."""
        engine = self._engine
        waiting = asyncio.ensure_future(engine._durable(outcome.lsn_seen_max))
        try:
            done, _ = await asyncio.wait({waiting}, timeout=DURABLE_READ_AFTER_S)
            if not done:
                worker = await engine._pipeline_reader()
                if worker is not None:
                    again = await self._queue(worker, sql, params, many, durable_read=True)
                    if not isinstance(again.error, (SnapshotTooOld, _ReadOnly)):
                        engine.stats.durable_reads += 1
                        return again
            await waiting
            return outcome
        finally:
            waiting.cancel()

    async def _queue(
        self,
        worker: _Worker,
        sql: str,
        params: Params | list[Params],
        many: bool,
        durable_read: bool = False,
    ) -> _Outcome:
        self._count(worker)
        self._statement_worker = worker
        try:
            return await worker.submit(
                lambda connection: connection.run(
                    sql, params, many=many, autocommit=True, durable_read=durable_read
                ),
                self,
            )
        finally:
            self._statement_worker = None

    async def _in_transaction(
        self, sql: str, params: Params | list[Params], many: bool, read: bool
    ) -> Result:
        """A statement of an explicit transaction, or a script, on the connection the
        session holds (taken now if it has none)."""
        engine = self._engine
        worker = self._worker
        explicit = self._transaction
        if worker is None:
            begin, self._begin = self._begin, None
            to_writer = self._begin_writer or many or not read
            worker = self._worker = await engine._lease(self, writer=to_writer)
            outcome = await self._run_on(worker, sql, params, many, begin=begin)
            if isinstance(outcome.error, _ReadOnly):
                # Nothing of this transaction was released: start it over on the writer.
                await self._give_up_connection()
                engine.stats.moved_to_writer += 1
                worker = self._worker = await engine._lease(self, writer=True)
                outcome = await self._run_on(worker, sql, params, many, begin=begin)
        elif not worker.writer and (many or not read):
            outcome = await self._move_to_writer(sql, params, many)
        else:
            outcome = await self._run_on(worker, sql, params, many)
            if isinstance(outcome.error, _ReadOnly):
                outcome = await self._move_to_writer(sql, params, many)
        return await self._finish(outcome, explicit)

    async def _move_to_writer(
        self, sql: str, params: Params | list[Params], many: bool
    ) -> _Outcome:
        """Moves the session's reader transaction to the writer if nothing was
        committed after its read point (see the module docstring)."""
        engine = self._engine
        read_point = self._read_point
        await self._give_up_connection()
        engine.stats.moved_to_writer += 1
        worker = self._worker = await engine._lease(self, writer=True)
        outcome = await self._run_on(
            worker, sql, params, many, begin="BEGIN", read_point=read_point
        )
        if isinstance(outcome.error, SerializationFailure):
            engine.stats.serialization_failures += 1
        return outcome

    async def _run_on(
        self,
        worker: _Worker,
        sql: str,
        params: Params | list[Params],
        many: bool,
        *,
        begin: str | None = None,
        read_point: Lsn | None = None,
    ) -> _Outcome:
        self._count(worker)
        self._statement_worker = worker
        try:
            outcome = await self._call(
                worker,
                lambda connection: connection.run(
                    sql, params, many=many, begin=begin, read_point=read_point
                ),
                self,
            )
        finally:
            self._statement_worker = None
        if not worker.writer and outcome.in_transaction and outcome.read_point is not None:
            self._read_point = outcome.read_point
        return outcome

    async def _finish(self, outcome: _Outcome, explicit: bool) -> Result:
        """Gives the connection back if its transaction ended, fails the session's
        transaction on an error, and releases the result once durable."""
        if not outcome.in_transaction:
            self._release()
        if outcome.error is not None and (explicit or outcome.in_transaction):
            # As in PostgreSQL an error aborts the whole transaction. The
            # connection, if still in it, is kept for ROLLBACK TO a savepoint.
            self._transaction = True
            self._failed = True
        else:
            self._transaction = outcome.in_transaction
        # Errors too: "UNIQUE constraint failed" tells of a row that may not be
        # durable yet.
        await self._engine._durable(outcome.lsn_seen_max)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    def _count(self, worker: _Worker) -> None:
        stats = self._engine.stats
        if worker.writer:
            stats.statements_writer += 1
        else:
            stats.statements_reader += 1

    def _end_transaction(self) -> None:
        self._transaction = False
        self._failed = False
        self._begin = None
        self._begin_writer = False

    async def _give_up_connection(self) -> None:
        """Rolls the held connection's transaction back and gives the connection
        back. A rollback shows nothing new: there is nothing to wait for."""
        worker = self._worker
        assert worker is not None
        outcome = await self._call(worker, lambda connection: connection.rollback())
        assert not outcome.in_transaction
        self._release()

    def _release(self) -> None:
        worker, self._worker = self._worker, None
        self._read_point = None
        if worker is not None:
            assert worker.owner is self
            self._engine._give_back(worker)

    async def _call(
        self, worker: _Worker, job: Callable[[_Connection], T], session: Session | None = None
    ) -> T:
        """Runs a job on the connection this session holds (a cancellable statement
        of `session`, if given)."""
        assert worker.owner is self
        future = worker.submit(job, session)
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """The caller was cancelled while a job ran: roll back after it (a worker's
        jobs run in order), then give the connection back. An explicit transaction
        is left failed, as after an error."""
        worker, self._worker = self._worker, None
        self._read_point = None
        self._failed = self._transaction
        self._begin = None
        if worker is None:
            return
        engine = self._engine

        async def rollback() -> None:
            try:
                await worker.submit(lambda connection: connection.rollback())
            finally:
                engine._give_back(worker)

        engine._spawn(rollback())
