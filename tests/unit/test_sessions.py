"""compute_node/engine/sessions: client sessions on worker-owned SQLite connections.

Against the in-memory MemoryPageSource and a fake `wait_durable` the test controls
(a "durable up to" LSN it advances), so every durability rule is checked exactly:
a COMMIT is not answered, and a read not released, before the LSN it depends on is
durable, while the writer goes on committing other transactions.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import apsw
import pytest

from borealis.errors import (
    QueryCanceled,
    SerializationFailure,
    SnapshotTooOld,
    TransactionAborted,
    Unavailable,
    sqlstate_of,
)
from borealis.ids import LSN_NONE, Lsn
from compute_node.engine import VolumeFile
from compute_node.engine import sessions as sessions_module
from compute_node.engine.memory import MemoryPageSource
from compute_node.engine.sessions import (
    Control,
    Engine,
    Session,
    StatementError,
    control_of,
    kind_of,
)
from compute_node.engine.vfs import VolumeState

pytestmark = pytest.mark.unit

T = TypeVar("T")
TIMEOUT_S = 30.0
ACCOUNTS = 40
BALANCE = 1000


def run(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(test(), TIMEOUT_S)

    return asyncio.run(bounded())


class Durability:
    """A fake wait_durable: returns at once while `automatic`, else once `advance`
    moved `lsn_durable` to the asked LSN."""

    def __init__(self, source: MemoryPageSource, automatic: bool = True) -> None:
        self.source = source
        self.automatic = automatic
        self.lsn_durable: Lsn = LSN_NONE
        self.asked: list[Lsn] = []
        self._changed = asyncio.Event()

    async def wait_durable(self, lsn: Lsn) -> None:
        self.asked.append(lsn)
        while not self.automatic and lsn > self.lsn_durable:
            changed = self._changed
            await changed.wait()

    def advance(self, lsn: Lsn | None = None) -> None:
        """Makes everything up to `lsn` (default: the newest commit) durable."""
        self.lsn_durable = max(self.lsn_durable, self.source.lsn_newest() if lsn is None else lsn)
        self._changed.set()
        self._changed = asyncio.Event()

    async def ticker(self, interval_s: float = 0.001) -> None:
        """Advances to the newest commit every interval: a shipper with a round trip."""
        while True:
            lsn = self.source.lsn_newest()
            await asyncio.sleep(interval_s)
            self.advance(lsn)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.001)


async def stays_pending(*tasks: asyncio.Task[Any], seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
    for task in tasks:
        assert not task.done(), task


async def open_engine(
    automatic: bool = True, **options: Any
) -> tuple[Engine, MemoryPageSource, Durability]:
    source = MemoryPageSource(pages_per_pg=16)
    durability = Durability(source, automatic)
    engine = await Engine.open(source, durability.wait_durable, **options)
    return engine, source, durability


async def create_bank(session: Session) -> None:
    await session.execute("CREATE TABLE account(id INTEGER PRIMARY KEY, balance INTEGER)")
    await session.executemany(
        "INSERT INTO account VALUES(?, ?)", ((i, BALANCE) for i in range(ACCOUNTS))
    )


async def total(session: Session) -> int:
    return (await session.execute("SELECT sum(balance) FROM account")).rows[0][0]


async def balance(session: Session, account: int) -> int:
    rows = (await session.execute("SELECT balance FROM account WHERE id = ?", (account,))).rows
    return rows[0][0]


# -- classification ---------------------------------------------------------------------


def test_transaction_control_is_recognised_only_as_a_lone_statement() -> None:
    assert control_of("begin") is Control.BEGIN
    assert control_of("  BEGIN DEFERRED TRANSACTION ; ") is Control.BEGIN
    assert control_of("begin immediate") is Control.BEGIN_WRITE
    assert control_of("BEGIN EXCLUSIVE TRANSACTION") is Control.BEGIN_WRITE
    assert control_of("commit") is control_of("END TRANSACTION;") is Control.COMMIT
    assert control_of("rollback") is Control.ROLLBACK
    assert control_of("ROLLBACK TO SAVEPOINT a") is Control.ROLLBACK_TO
    assert control_of("BEGIN; INSERT INTO t VALUES(1)") is None
    assert control_of("SELECT 1") is None
    assert kind_of("/* c */ select 1").read
    assert kind_of("WITH x AS (SELECT 1) SELECT * FROM x").read
    assert not kind_of("INSERT INTO t VALUES(1)").read
    assert not kind_of("PRAGMA user_version = 3").read
    assert kind_of("SELECT ';'").pipelined is False, "a ';' inside a literal is only slower"
    assert kind_of("SELECT 1;").pipelined
    assert not kind_of("SAVEPOINT a").pipelined


# -- results ---------------------------------------------------------------------------


def test_results_carry_columns_rows_and_counts() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine()
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
        inserted = await session.executemany("INSERT INTO t VALUES(?, ?)", [(1, "x"), (2, "y")])
        assert inserted.rowcount == 2 and inserted.columns == ()
        empty = await session.execute("SELECT a, b FROM t WHERE a > 10")
        assert empty.columns == ("a", "b") and empty.rows == [] and empty.rowcount == 0
        assert empty.decltypes == ("INTEGER", "TEXT")
        rows = await session.execute("SELECT b FROM t ORDER BY a")
        assert rows.rows == [("x",), ("y",)] and rows.rowcount == 2
        updated = await session.execute("UPDATE t SET b = 'z'")
        assert updated.rowcount == 2
        script = await session.execute("SELECT 1 AS one; SELECT a AS key FROM t WHERE a = ?", (2,))
        assert script.columns == ("key",) and script.rows == [(2,)]
        returning = await session.execute("INSERT INTO t VALUES(3, 'w') RETURNING a")
        assert returning.rows == [(3,)] and returning.rowcount == 1
        await engine.close()

    run(test)


# -- durability ------------------------------------------------------------------------


def test_commit_returns_only_once_durable_and_the_writer_commits_meanwhile() -> None:
    async def test() -> None:
        engine, source, durability = await open_engine(automatic=False)
        first, second = engine.session(), engine.session()
        setup = asyncio.create_task(first.execute("CREATE TABLE t(a INTEGER)"))
        await stays_pending(setup)
        durability.advance()
        await setup

        await first.execute("BEGIN")
        await first.execute("INSERT INTO t VALUES(1)")
        lsn_before = source.lsn_newest()
        commit = asyncio.create_task(first.execute("COMMIT"))
        await eventually(lambda: source.lsn_newest() > lsn_before)
        lsn_first = source.lsn_newest()
        await stays_pending(commit)
        assert not first.in_transaction, "the transaction is over; only its answer waits"

        # The writer is free while the first commit waits: group commit.
        insert = asyncio.create_task(second.execute("INSERT INTO t VALUES(2)"))
        await eventually(lambda: source.lsn_newest() > lsn_first)
        await stays_pending(commit, insert)

        durability.advance(lsn_first)
        await commit
        await stays_pending(insert)
        durability.advance()
        assert (await insert).rowcount == 1
        assert durability.asked[-1] == source.lsn_newest()
        await engine.close()

    run(test)


@pytest.mark.parametrize("writer_reads_max", [16, 0], ids=["read-on-writer", "read-on-reader"])
def test_a_read_is_released_only_once_what_it_saw_is_durable(writer_reads_max: int) -> None:
    async def test() -> None:
        engine, source, durability = await open_engine(
            automatic=False, writer_reads_max=writer_reads_max
        )
        writer, reader = engine.session(), engine.session()
        setup = asyncio.create_task(writer.execute("CREATE TABLE t(a INTEGER)"))
        await eventually(lambda: source.lsn_newest() > LSN_NONE)
        durability.advance()
        await setup
        # Nothing new: a read is answered without waiting.
        assert (await reader.execute("SELECT count(*) FROM t")).rows == [(0,)]

        insert = asyncio.create_task(writer.execute("INSERT INTO t VALUES(1)"))
        lsn_before = source.lsn_newest()
        await eventually(lambda: source.lsn_newest() > lsn_before)
        select = asyncio.create_task(reader.execute("SELECT count(*) FROM t"))
        await stays_pending(insert, select)
        durability.advance()
        assert (await select).rows == [(1,)]
        await insert

        # In a read transaction too (its first read takes a reader, or the writer).
        await reader.execute("BEGIN")
        insert = asyncio.create_task(writer.execute("INSERT INTO t VALUES(2)"))
        lsn_before = source.lsn_newest()
        await eventually(lambda: source.lsn_newest() > lsn_before)
        select = asyncio.create_task(reader.execute("SELECT count(*) FROM t"))
        await stays_pending(select)
        durability.advance()
        assert (await select).rows == [(2,)]
        await reader.execute("COMMIT")
        await insert
        assert engine.stats.statements_reader > 0 or writer_reads_max > 0
        await engine.close()

    run(test)


def test_a_read_waiting_too_long_for_durability_runs_again_at_the_vdl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage cannot make the newest commits durable (an AZ and one more node
    down): reads on the writer's engine are answered at the VDL instead of waiting."""
    monkeypatch.setattr(sessions_module, "DURABLE_READ_AFTER_S", 0.05)

    async def test() -> None:
        engine, source, durability = await open_engine(automatic=False)
        state = engine.vfs.state
        state.start_durable_reads(source.lsn_newest())

        def make_durable() -> None:
            durability.advance()
            state.note_vdl(durability.lsn_durable)

        writer, reader = engine.session(), engine.session()
        setup = asyncio.create_task(writer.execute("CREATE TABLE t(a INTEGER, b BLOB)"))
        await eventually(lambda: source.lsn_newest() > LSN_NONE)
        make_durable()
        await setup
        insert = asyncio.create_task(writer.execute("INSERT INTO t VALUES(1, zeroblob(10))"))
        await eventually(lambda: source.lsn_newest() > durability.lsn_durable)
        make_durable()
        await insert
        # Commits that grow the file and change pages, none of them durable.
        lsn_before = source.lsn_newest()
        grow = asyncio.create_task(
            writer.execute(
                "WITH RECURSIVE n(x) AS (SELECT 2 UNION ALL SELECT x + 1 FROM n WHERE x < 200) "
                "INSERT INTO t SELECT x, zeroblob(3000) FROM n"
            )
        )
        await eventually(lambda: source.lsn_newest() > lsn_before)
        assert source.page_count() > state._page_count_vdl
        # The read sees every acknowledged commit and none of the others.
        assert (await reader.execute("SELECT count(*), sum(a) FROM t")).rows == [(1, 1)]
        assert engine.stats.durable_reads == 1
        assert (await reader.execute("PRAGMA integrity_check")).rows == [("ok",)]
        assert not grow.done()
        make_durable()
        await grow
        assert (await reader.execute("SELECT count(*) FROM t")).rows == [(200,)]
        assert engine.stats.durable_reads == 2  # the integrity check above
        await engine.close()

    run(test)


def test_a_failed_durability_wait_fails_the_commit() -> None:
    async def test() -> None:
        source = MemoryPageSource()
        failing = False

        async def wait_durable(lsn: Lsn) -> None:
            if failing:
                raise Unavailable("no write quorum", lsn=lsn)

        engine = await Engine.open(source, wait_durable)
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER)")
        failing = True
        with pytest.raises(Unavailable):
            await session.execute("INSERT INTO t VALUES(1)")
        failing = False
        await engine.close()

    run(test)


# -- isolation -------------------------------------------------------------------------


def test_read_then_write_after_a_newer_commit_is_a_serialization_failure() -> None:
    async def test() -> None:
        # writer_reads_max=0: reads go to readers, as they do while the writer is busy.
        engine, _, _ = await open_engine(writer_reads_max=0)
        first, second = engine.session(), engine.session()
        await create_bank(first)
        await first.execute("BEGIN")
        assert await balance(first, 1) == BALANCE
        await second.execute("UPDATE account SET balance = balance + 5 WHERE id = 1")
        # The snapshot holds: the reader transaction does not see the update...
        assert await balance(first, 1) == BALANCE
        # ...and cannot write on top of it.
        with pytest.raises(SerializationFailure) as raised:
            await first.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")
        assert sqlstate_of(raised.value) == "40001"
        assert first.in_transaction and first.transaction_failed
        with pytest.raises(TransactionAborted):
            await first.execute("SELECT 1")
        await first.execute("ROLLBACK")
        assert not first.in_transaction
        # Retried, the transaction goes through.
        await first.execute("BEGIN")
        assert await balance(first, 1) == BALANCE + 5
        await first.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")
        await first.execute("COMMIT")
        assert await total(second) == ACCOUNTS * BALANCE
        assert engine.stats.serialization_failures == 1
        await engine.close()

    run(test)


def test_read_then_write_with_no_newer_commit_moves_to_the_writer() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(writer_reads_max=0)
        first, second = engine.session(), engine.session()
        await create_bank(first)
        await first.execute("BEGIN")
        assert await balance(first, 1) == BALANCE
        moved = engine.stats.moved_to_writer
        await first.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")
        assert engine.stats.moved_to_writer == moved + 1
        assert await balance(first, 1) == BALANCE - 5
        # The other session reads the old value until the commit.
        assert await balance(second, 1) == BALANCE
        await first.execute("UPDATE account SET balance = balance + 5 WHERE id = 2")
        await first.execute("COMMIT")
        assert await balance(second, 1) == BALANCE - 5
        assert await total(second) == ACCOUNTS * BALANCE
        assert engine.stats.serialization_failures == 0
        await engine.close()

    run(test)


def test_a_statement_guessed_a_read_that_writes_runs_on_the_writer() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(writer_reads_max=0)
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER)")
        await session.execute("WITH v(x) AS (VALUES (1), (2)) INSERT INTO t SELECT x FROM v")
        await session.execute("SELECT 1; INSERT INTO t VALUES(3)")
        await session.execute("BEGIN")
        await session.execute("WITH v(x) AS (VALUES (4)) INSERT INTO t SELECT x FROM v")
        await session.execute("COMMIT")
        assert (await session.execute("SELECT count(*) FROM t")).rows == [(4,)]
        assert engine.stats.moved_to_writer == 3
        await engine.close()

    run(test)


def test_bank_with_eight_sessions_keeps_the_total_and_makes_progress() -> None:
    async def test() -> None:
        engine, source, durability = await open_engine(automatic=False, readers=2)
        ticker = asyncio.create_task(durability.ticker())
        setup = engine.session()
        await create_bank(setup)
        transfers_each = 25
        done = [0] * 8
        failures = [0] * 8

        async def client(index: int) -> None:
            session = engine.session()
            rng = random.Random(index)
            # Half start with a read on a snapshot (and may get 40001), half say
            # up front that they will write.
            begin = "BEGIN" if index % 2 else "BEGIN IMMEDIATE"
            while done[index] < transfers_each:
                source_id, target_id = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randrange(1, 100)
                await session.execute(begin)
                try:
                    if await balance(session, source_id) >= amount:
                        await session.execute(
                            "UPDATE account SET balance = balance - ? WHERE id = ?",
                            (amount, source_id),
                        )
                        await session.execute(
                            "UPDATE account SET balance = balance + ? WHERE id = ?",
                            (amount, target_id),
                        )
                    await session.execute("COMMIT")
                    done[index] += 1
                except SerializationFailure:
                    failures[index] += 1
                    await session.execute("ROLLBACK")
            await session.close()

        async def auditor(stop: asyncio.Event) -> int:
            session = engine.session()
            audits = 0
            while not stop.is_set():
                assert await total(session) == ACCOUNTS * BALANCE
                await session.execute("BEGIN")
                first = await total(session)
                second = (await session.execute("SELECT sum(balance) FROM account")).rows[0][0]
                await session.execute("COMMIT")
                assert first == second == ACCOUNTS * BALANCE
                audits += 1
            await session.close()
            return audits

        stop = asyncio.Event()
        audit = asyncio.create_task(auditor(stop))
        await asyncio.gather(*(client(index) for index in range(8)))
        stop.set()
        assert await audit > 0
        assert done == [transfers_each] * 8
        assert await total(setup) == ACCOUNTS * BALANCE
        assert sum(failures[0::2]) == 0, "BEGIN IMMEDIATE never gets 40001"
        assert engine.stats.serialization_failures == sum(failures)
        check = await setup.execute("PRAGMA integrity_check")
        assert check.rows == [("ok",)]
        ticker.cancel()
        assert source.lsn_newest() > LSN_NONE
        await engine.close()

    run(test)


# -- errors and transaction state --------------------------------------------------------


def test_an_error_in_a_transaction_aborts_it_as_in_postgresql() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine()
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER PRIMARY KEY)")
        # Autocommit: the error is the statement's only.
        await session.execute("INSERT INTO t VALUES(1)")
        with pytest.raises(StatementError) as raised:
            await session.execute("INSERT INTO t VALUES(1)")
        assert isinstance(raised.value.sqlite_error, apsw.ConstraintError)
        assert not session.in_transaction

        await session.execute("BEGIN")
        await session.execute("INSERT INTO t VALUES(2)")
        with pytest.raises(StatementError):
            await session.execute("INSERT INTO t VALUES(1)")
        assert session.transaction_failed
        with pytest.raises(TransactionAborted):
            await session.execute("INSERT INTO t VALUES(3)")
        await session.execute("COMMIT")  # rolls back
        assert not session.in_transaction
        assert (await session.execute("SELECT a FROM t")).rows == [(1,)]

        # ROLLBACK TO a savepoint recovers the transaction.
        await session.execute("BEGIN")
        await session.execute("INSERT INTO t VALUES(2)")
        await session.execute("SAVEPOINT before")
        with pytest.raises(StatementError):
            await session.execute("INSERT INTO t VALUES(1)")
        await session.execute("ROLLBACK TO SAVEPOINT before")
        assert session.in_transaction and not session.transaction_failed
        await session.execute("COMMIT")
        assert (await session.execute("SELECT a FROM t ORDER BY a")).rows == [(1,), (2,)]

        with pytest.raises(StatementError):
            await session.execute("COMMIT")
        with pytest.raises(StatementError):
            await session.execute("BEGIN; SELECT nonsense FROM nowhere")
        assert session.transaction_failed, "the script left a transaction open"
        await session.execute("ROLLBACK")
        await engine.close()

    run(test)


def test_a_commit_refused_by_the_volume_ends_the_transaction() -> None:
    async def test() -> None:
        engine, source, _ = await open_engine()
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER)")
        await session.execute("BEGIN")
        await session.execute("INSERT INTO t VALUES(1)")
        source.fail_next_admit = Unavailable("fenced", epoch=2)
        with pytest.raises(Unavailable):
            await session.execute("COMMIT")
        assert not session.in_transaction
        await session.execute("INSERT INTO t VALUES(2)")
        assert (await session.execute("SELECT a FROM t")).rows == [(2,)]
        await engine.close()

    run(test)


def test_closing_a_session_mid_transaction_rolls_back_and_frees_its_connection() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(readers=1, writer_reads_max=0)
        first, second = engine.session(), engine.session()
        await first.execute("CREATE TABLE t(a INTEGER)")
        await first.execute("BEGIN IMMEDIATE")
        await first.execute("INSERT INTO t VALUES(1)")
        await first.close()
        # The writer is free again, and the insert is gone.
        await second.execute("INSERT INTO t VALUES(2)")
        assert (await second.execute("SELECT a FROM t")).rows == [(2,)]

        # The only reader, held by a read transaction, is given back too.
        third = engine.session()
        await third.execute("BEGIN")
        await third.execute("SELECT count(*) FROM t")
        await third.close()
        await second.execute("BEGIN")
        assert (await second.execute("SELECT count(*) FROM t")).rows == [(1,)]
        await second.execute("COMMIT")
        with pytest.raises(Exception, match="closed"):
            await first.execute("SELECT 1")
        await engine.close()

    run(test)


class GatedFile(VolumeFile):
    """Blocks in xWrite while `gate` is set, until it is cleared."""

    gate: threading.Event | None = None
    entered = threading.Event()

    def xWrite(self, data: bytes, offset: int) -> None:
        gate = GatedFile.gate
        if gate is not None:
            GatedFile.entered.set()
            gate.wait(TIMEOUT_S)
        super().xWrite(data, offset)


def test_a_cancelled_statement_fails_its_transaction_and_frees_the_writer() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(file_class=GatedFile, writer_cache_pages=1)
        first, second = engine.session(), engine.session()
        await first.execute("CREATE TABLE t(a INTEGER, b TEXT)")
        await first.execute("BEGIN IMMEDIATE")
        gate = threading.Event()
        GatedFile.gate = gate
        GatedFile.entered.clear()
        try:
            # A cache of one page makes SQLite spill, so the statement writes.
            statement = asyncio.create_task(
                first.execute(
                    "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500)"
                    " INSERT INTO t SELECT x, printf('%.500c', 'x') FROM s"
                )
            )
            await eventually(GatedFile.entered.is_set)
            statement.cancel()
            with pytest.raises(asyncio.CancelledError):
                await statement
        finally:
            GatedFile.gate = None
            gate.set()
        assert first.transaction_failed
        await first.execute("ROLLBACK")
        await second.execute("INSERT INTO t VALUES(1, 'y')")
        assert (await second.execute("SELECT count(*) FROM t")).rows == [(1,)]
        await engine.close()

    run(test)


SLOW_COUNT = (
    "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 100000000)"
    " SELECT count(*) FROM s"
)


@pytest.mark.parametrize("in_transaction", [False, True])
def test_cancel_interrupts_the_running_statement_and_the_session_goes_on(
    in_transaction: bool,
) -> None:
    async def test() -> None:
        engine, _, _ = await open_engine()
        session, other = engine.session(), engine.session()
        if in_transaction:
            await session.execute("BEGIN")
        statement = asyncio.create_task(session.execute(SLOW_COUNT))
        # Running on the thread, not just queued: the interrupt path.
        await eventually(
            lambda: (
                session._statement_worker is not None
                and session._statement_worker._running is session
            )
        )
        session.cancel()
        with pytest.raises(QueryCanceled):
            await statement
        assert sqlstate_of(QueryCanceled("x")) == "57014"
        if in_transaction:
            assert session.transaction_failed
            await session.execute("ROLLBACK")
        assert (await session.execute("SELECT 1")).rows == [(1,)]
        # Another session's statements are not touched by the cancel.
        assert (await other.execute("SELECT 2")).rows == [(2,)]
        session.cancel()  # nothing runs: a no-op
        assert (await session.execute("SELECT 3")).rows == [(3,)]
        await engine.close()

    run(test)


# -- threads ---------------------------------------------------------------------------


class ThreadRecordingFile(VolumeFile):
    """Records the thread of every VFS callback that matters."""

    threads: set[int] = set()


def _recorded(name: str) -> Callable[..., Any]:
    inner = getattr(VolumeFile, name)

    def recorded(self: ThreadRecordingFile, *args: Any) -> Any:
        ThreadRecordingFile.threads.add(threading.get_ident())
        return inner(self, *args)

    return recorded


for _name in ("xRead", "xWrite", "xLock", "xUnlock", "xFileControl", "xFileSize", "xClose"):
    setattr(ThreadRecordingFile, _name, _recorded(_name))


def test_no_sqlite_call_happens_on_the_event_loop_thread() -> None:
    statement_threads: set[int] = set()

    def hook(connection: apsw.Connection) -> None:
        # Every statement on every connection, including cache-hot ones that make
        # no VFS callback.
        def trace(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
            statement_threads.add(threading.get_ident())
            return True

        connection.exec_trace = trace

    async def test() -> None:
        ThreadRecordingFile.threads = set()
        engine, _, _ = await open_engine(file_class=ThreadRecordingFile, writer_reads_max=1)
        sessions = [engine.session() for _ in range(6)]
        await create_bank(sessions[0])

        async def work(session: Session, index: int) -> None:
            for round_ in range(10):
                if index % 2:
                    await session.execute("BEGIN")
                    await balance(session, index)
                    await session.execute("COMMIT")
                else:
                    await session.execute(
                        "UPDATE account SET balance = balance WHERE id = ?", (round_,)
                    )
                await total(session)

        await asyncio.gather(*(work(session, index) for index, session in enumerate(sessions)))
        loop_thread = threading.get_ident()
        workers = set(engine.thread_ids)
        assert engine.stats.statements_reader > 0 and engine.stats.statements_writer > 0
        await engine.close()
        assert loop_thread not in ThreadRecordingFile.threads | statement_threads
        assert ThreadRecordingFile.threads <= workers and statement_threads <= workers

    apsw.connection_hooks.append(hook)
    try:
        run(test)
    finally:
        apsw.connection_hooks.remove(hook)
    assert statement_threads


def test_two_hundred_sessions_use_only_the_engine_threads() -> None:
    async def test() -> None:
        threads_before = threading.active_count()
        engine, _, durability = await open_engine(automatic=False, readers=2)
        ticker = asyncio.create_task(durability.ticker())
        setup = engine.session()
        await create_bank(setup)
        threads_most = 0

        async def client(index: int) -> None:
            nonlocal threads_most
            session = engine.session()
            for round_ in range(5):
                if (index + round_) % 3 == 0:
                    await session.execute("BEGIN IMMEDIATE")
                    await session.execute(
                        "UPDATE account SET balance = balance + 1 WHERE id = ?", (index % ACCOUNTS,)
                    )
                    await session.execute(
                        "UPDATE account SET balance = balance - 1 WHERE id = ?",
                        ((index + 1) % ACCOUNTS,),
                    )
                    await session.execute("COMMIT")
                elif (index + round_) % 3 == 1:
                    await session.execute("BEGIN")
                    assert await total(session) == ACCOUNTS * BALANCE
                    await session.execute("COMMIT")
                else:
                    assert await total(session) == ACCOUNTS * BALANCE
                threads_most = max(threads_most, threading.active_count())
            await session.close()

        await asyncio.gather(*(client(index) for index in range(200)))
        assert threads_most <= threads_before + 3, (threads_most, threads_before)
        assert await total(setup) == ACCOUNTS * BALANCE
        ticker.cancel()
        await engine.close()
        assert threading.active_count() <= threads_before

    run(test)


def test_engine_close_rolls_back_open_sessions_and_stops_its_threads() -> None:
    async def test() -> None:
        threads_before = threading.active_count()
        engine, source, _ = await open_engine()
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER)")
        lsn = source.lsn_newest()
        await session.execute("BEGIN")
        await session.execute("INSERT INTO t VALUES(1)")
        await engine.close()
        assert source.lsn_newest() == lsn
        assert threading.active_count() <= threads_before
        with pytest.raises(Exception, match="closed"):
            engine.session()

        # A statement waiting for the writer, held by an open transaction, fails
        # instead of holding the close up.
        engine = await Engine.open(source, _immediate)
        holder, waiter = engine.session(), engine.session()
        await holder.execute("BEGIN IMMEDIATE")
        await holder.execute("INSERT INTO t VALUES(2)")
        waiting = asyncio.create_task(waiter.execute("INSERT INTO t VALUES(3)"))
        await stays_pending(waiting)
        await engine.close()
        with pytest.raises(Exception, match="closed"):
            await waiting
        assert source.lsn_newest() == lsn

        # The volume reopens with what was committed.
        reopened = await Engine.open(source, _immediate)
        again = reopened.session()
        assert (await again.execute("SELECT count(*) FROM t")).rows == [(0,)]
        await reopened.close()

    run(test)


async def _immediate(lsn: Lsn) -> None:
    return None


def test_snapshot_too_old_reaches_the_session_unchanged() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(
            writer_reads_max=0, versions_bytes_max=8 * 4096, reader_cache_pages=10
        )
        reader, writer = engine.session(), engine.session()
        await create_bank(writer)
        await writer.execute("CREATE TABLE pad(a INTEGER, b TEXT)")
        await reader.execute("BEGIN")
        await reader.execute("SELECT count(*) FROM account")
        for _ in range(20):
            await writer.execute("INSERT INTO pad VALUES(1, printf('%.3000c', 'x'))")
        assert isinstance(engine.vfs.state, VolumeState)
        assert engine.vfs.state.lsn_expired > LSN_NONE
        with pytest.raises(SnapshotTooOld):
            await reader.execute("SELECT count(*) FROM pad")
        assert reader.transaction_failed
        await reader.execute("ROLLBACK")
        await engine.close()

    run(test)


# -- reader connections at run time (capacity) ------------------------------------------


def _reader_threads_alive() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("sqlite-r")}


def test_set_readers_adds_connections_that_take_work_at_once() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(readers=1, writer_reads_max=0)
        setup = engine.session()
        await create_bank(setup)
        await engine.set_readers(4)
        assert engine.readers == 4 and len(engine.thread_ids) == 5
        assert engine.stats.readers_added == 3
        # Four read transactions hold the four readers at once.
        holders = [engine.session() for _ in range(4)]
        for session in holders:
            await session.execute("BEGIN")
            assert await total(session) == ACCOUNTS * BALANCE
        held = {session._worker for session in holders}
        assert len(held) == 4 and all(each is not None and not each.writer for each in held)
        for session in holders:
            await session.execute("COMMIT")
        await engine.close()

    run(test)


def test_a_drained_reader_finishes_its_transaction_and_queue_then_closes() -> None:
    async def test() -> None:
        threads_before = _reader_threads_alive()
        engine, _, _ = await open_engine(readers=3, writer_reads_max=0)
        setup = engine.session()
        await create_bank(setup)
        # Each reader held by a read transaction.
        holders = [engine.session() for _ in range(3)]
        for session in holders:
            await session.execute("BEGIN")
            assert await total(session) == ACCOUNTS * BALANCE
        started = _reader_threads_alive() - threads_before
        assert len(started) == 3
        await engine.set_readers(1)
        assert engine.readers == 1 and engine.readers_draining == 2
        # Draining interrupts no one: every held transaction goes on and commits.
        for session in holders:
            assert await total(session) == ACCOUNTS * BALANCE
            await session.execute("COMMIT")
        await eventually(lambda: engine.readers_draining == 0)
        await eventually(lambda: len(_reader_threads_alive() - threads_before) == 1)
        assert engine.stats.readers_drained == 2
        # Work goes on on the one reader left.
        reader = engine.session()
        await reader.execute("BEGIN")
        assert await total(reader) == ACCOUNTS * BALANCE
        assert reader._worker is not None and not reader._worker.writer
        await reader.execute("COMMIT")
        await engine.close()
        assert not _reader_threads_alive() - threads_before

    run(test)


def test_statements_queued_on_a_drained_reader_all_complete() -> None:
    async def test() -> None:
        engine, _, _ = await open_engine(readers=4, writer_reads_max=0)
        setup = engine.session()
        await create_bank(setup)
        # Every reader busy with a job that waits for the gate, so the reads queue.
        gate = threading.Event()
        blockers = [
            worker.submit(lambda connection: gate.wait(TIMEOUT_S)) for worker in engine._readers
        ]
        sessions = [engine.session() for _ in range(40)]
        reads = [asyncio.create_task(total(session)) for session in sessions]
        await eventually(lambda: engine.load().queued_statements == 40)
        # Every reader but one is drained with its queue full, then the gate opens.
        await engine.set_readers(1)
        assert engine.stats.readers_drained == 3
        gate.set()
        assert await asyncio.gather(*blockers) == [True] * 4
        assert await asyncio.gather(*reads) == [ACCOUNTS * BALANCE] * 40
        await engine.close()

    run(test)


def test_bank_keeps_its_total_while_readers_come_and_go() -> None:
    async def test() -> None:
        engine, _, durability = await open_engine(automatic=False, readers=2)
        ticker = asyncio.create_task(durability.ticker())
        setup = engine.session()
        await create_bank(setup)
        stop = asyncio.Event()

        async def client(index: int) -> int:
            session = engine.session()
            rng = random.Random(index)
            rounds = 0
            while not stop.is_set():
                source_id, target_id = rng.sample(range(ACCOUNTS), 2)
                await session.execute("BEGIN")
                assert await total(session) == ACCOUNTS * BALANCE
                await session.execute("COMMIT")
                await session.execute("BEGIN IMMEDIATE")
                await session.execute(
                    "UPDATE account SET balance = balance - 1 WHERE id = ?", (source_id,)
                )
                await session.execute(
                    "UPDATE account SET balance = balance + 1 WHERE id = ?", (target_id,)
                )
                await session.execute("COMMIT")
                assert await total(session) == ACCOUNTS * BALANCE
                rounds += 1
            await session.close()
            return rounds

        clients = [asyncio.create_task(client(index)) for index in range(8)]
        for readers in (4, 0, 3, 1, 6, 2):
            await engine.set_readers(readers)
            assert engine.readers == readers
            await asyncio.sleep(0.05)
        stop.set()
        rounds = await asyncio.gather(*clients)
        assert all(count > 0 for count in rounds), rounds
        assert await total(setup) == ACCOUNTS * BALANCE
        await eventually(lambda: engine.readers_draining == 0)
        ticker.cancel()
        await engine.close()

    run(test)


def test_load_counts_active_sessions_queued_statements_and_finished_ones() -> None:
    async def test() -> None:
        engine, _, durability = await open_engine(automatic=False, readers=1)
        session = engine.session()
        assert engine.load() == (0, 0, 0)
        creating = asyncio.create_task(session.execute("CREATE TABLE t(a INTEGER)"))
        # The CREATE waits for durability: its session is active.
        await eventually(lambda: engine.load().active_sessions == 1)
        holder, waiter = engine.session(), engine.session()
        durability.advance()
        await creating
        await holder.execute("BEGIN IMMEDIATE")
        inserting = asyncio.create_task(holder.execute("INSERT INTO t VALUES(1)"))
        # A write waits for the writer that the open transaction holds: queued.
        waiting = asyncio.create_task(waiter.execute("INSERT INTO t VALUES(2)"))
        await eventually(lambda: engine.load().queued_statements == 1)
        durability.automatic = True
        durability.advance()
        await inserting
        await holder.execute("COMMIT")
        await waiting
        load = engine.load()
        assert load.active_sessions == 0 and load.queued_statements == 0
        assert load.statements_total == 5
        await engine.close()

    run(test)
