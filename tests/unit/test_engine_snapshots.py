"""compute_node/engine: read points, snapshots and the write lock between connections.

Reading connections pin a read point per transaction and keep seeing it while the
writer commits (old page images come from the VFS's version store); SQLite's own
page cache is dropped exactly when the read point moved (page 1's derived change
counter). A transaction that read an old snapshot cannot write.
"""

from __future__ import annotations

import random
import threading

import apsw
import pytest

from compute_node.engine import (
    EngineConnection,
    LockingMode,
    SerializationFailure,
    SnapshotTooOld,
    VolumeVFS,
    open_connection,
)
from compute_node.engine.diagnostics import CountingVolumeFile
from compute_node.engine.memory import MemoryPageSource

pytestmark = pytest.mark.unit

ACCOUNTS = 3000
TOTAL = ACCOUNTS * 1000


class Volume:
    def __init__(self, **vfs_options: int) -> None:
        self.source = MemoryPageSource(pages_per_pg=16)
        self.vfs = VolumeVFS(self.source, file_class=CountingVolumeFile, **vfs_options)

    def writer(self, mode: LockingMode = LockingMode.EXCLUSIVE) -> EngineConnection:
        return open_connection(self.vfs, writable=True, locking_mode=mode)

    def reader(self, cache_pages: int = 2000) -> EngineConnection:
        return open_connection(
            self.vfs, writable=False, locking_mode=LockingMode.NORMAL, cache_pages=cache_pages
        )


def bank(volume: Volume, mode: LockingMode = LockingMode.EXCLUSIVE) -> EngineConnection:
    writer = volume.writer(mode)
    writer.sqlite.execute(
        "CREATE TABLE account(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER);"
        "CREATE INDEX account_owner ON account(owner)"
    )
    with writer.sqlite:
        writer.sqlite.executemany(
            "INSERT INTO account VALUES(?, ?, 1000)",
            ((i, f"owner-{i * 7919 % 100003:06d}-{'x' * 40}") for i in range(ACCOUNTS)),
        )
    return writer


def transfer(sqlite: apsw.Connection, rng: random.Random) -> None:
    source, target = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randrange(1, 50)
    sqlite.execute("BEGIN")
    sqlite.execute("UPDATE account SET balance = balance - ? WHERE id = ?", (amount, source))
    sqlite.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (amount, target))
    sqlite.execute("COMMIT")


def digest(sqlite: apsw.Connection) -> tuple:
    return sqlite.execute(
        "SELECT count(*), sum(balance), sum(balance * id), max(owner) FROM account"
    ).fetchall()[0]


def test_a_reader_sees_each_new_commit_and_keeps_its_cache_otherwise() -> None:
    volume = Volume()
    writer = bank(volume)
    reader = volume.reader()
    assert digest(reader.sqlite) == digest(writer.sqlite)
    file = reader.file
    assert isinstance(file, CountingVolumeFile)
    file.calls.clear()
    reader.sqlite.execute("SELECT balance FROM account WHERE id = 5").fetchall()
    # Cache-hot: only the 16-byte change counter read of the lock sequence.
    assert file.calls["xRead"] == 1
    writer.sqlite.execute("UPDATE account SET balance = 7 WHERE id = 5")
    file.calls.clear()
    assert reader.sqlite.execute("SELECT balance FROM account WHERE id = 5").fetchall() == [(7,)]
    assert file.calls["xRead"] > 1, "the read point moved: SQLite dropped its page cache"
    assert digest(reader.sqlite) == digest(writer.sqlite)


@pytest.mark.parametrize("cache_pages", [10, 2000])
def test_a_read_transaction_keeps_its_snapshot_while_the_writer_commits(cache_pages: int) -> None:
    volume = Volume()
    writer = bank(volume)
    reader = volume.reader(cache_pages=cache_pages)
    reader.sqlite.execute("BEGIN")
    before = digest(reader.sqlite)
    read_point = reader.file.read_point
    rng = random.Random(3)
    for _ in range(50):
        transfer(writer.sqlite, rng)
    writer.sqlite.execute("UPDATE account SET owner = owner || '-renamed' WHERE id % 5 = 0")
    writer.sqlite.execute("INSERT INTO account SELECT id + 10000, owner, 0 FROM account")
    assert volume.vfs.state.versions_bytes > 0
    assert volume.vfs.state.read_point_oldest() == read_point
    assert digest(reader.sqlite) == before
    assert reader.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    reader.sqlite.execute("COMMIT")
    assert volume.vfs.state.versions_bytes == 0, "no pinned reader needs old versions"
    assert digest(reader.sqlite) == digest(writer.sqlite) != before


def test_pages_cut_off_by_a_truncation_stay_readable_at_older_read_points() -> None:
    volume = Volume()
    writer = bank(volume)
    reader = volume.reader(cache_pages=10)
    reader.sqlite.execute("BEGIN")
    before = digest(reader.sqlite)
    pages = volume.source.page_count()
    writer.sqlite.execute("DELETE FROM account WHERE id >= 100")
    writer.sqlite.execute("VACUUM")
    assert volume.source.page_count() < pages
    assert digest(reader.sqlite) == before
    assert reader.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    reader.sqlite.execute("COMMIT")
    assert digest(reader.sqlite)[0] == 100


def test_a_stale_snapshot_cannot_write_and_a_fresh_one_can() -> None:
    volume = Volume()
    first = bank(volume, LockingMode.NORMAL)
    second = volume.writer(LockingMode.NORMAL)
    first.sqlite.execute("BEGIN")
    first.sqlite.execute("SELECT balance FROM account WHERE id = 1").fetchall()
    second.sqlite.execute("UPDATE account SET balance = balance + 1 WHERE id = 2")
    with pytest.raises(apsw.BusyError) as raised:
        first.sqlite.execute("UPDATE account SET balance = balance - 1 WHERE id = 1")
    failure = first.serialization_failure(raised.value)
    assert isinstance(failure, SerializationFailure)
    first.sqlite.execute("ROLLBACK")
    # An autocommit write after someone else's commit starts on a fresh snapshot.
    first.sqlite.execute("UPDATE account SET balance = balance - 1 WHERE id = 1")
    assert first.sqlite.execute("SELECT sum(balance) FROM account").fetchall() == [(TOTAL,)]
    assert digest(second.sqlite) == digest(first.sqlite)


def test_one_writer_at_a_time_and_a_plain_busy_is_not_a_conflict() -> None:
    volume = Volume()
    first = bank(volume, LockingMode.NORMAL)
    second = volume.writer(LockingMode.NORMAL)
    second.sqlite.set_busy_timeout(50)
    first.sqlite.execute("BEGIN IMMEDIATE")
    with pytest.raises(apsw.BusyError) as raised:
        second.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 1")
    assert second.serialization_failure(raised.value) is None
    first.sqlite.execute("COMMIT")
    second.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 1")


def test_the_exclusive_writer_keeps_the_write_lock() -> None:
    volume = Volume()
    writer = bank(volume)
    other = volume.writer(LockingMode.NORMAL)
    other.sqlite.set_busy_timeout(20)
    with pytest.raises(apsw.BusyError):
        other.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 1")
    writer.close()
    other.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 1")


def test_old_versions_are_bounded_and_a_reader_past_the_bound_gets_snapshot_too_old() -> None:
    volume = Volume(versions_bytes_max=64 * 1024)
    writer = bank(volume)
    reader = volume.reader(cache_pages=10)
    reader.sqlite.execute("BEGIN")
    digest(reader.sqlite)
    writer.sqlite.execute("UPDATE account SET balance = balance + 1")  # every leaf changes
    assert volume.vfs.state.versions_bytes <= 64 * 1024
    with pytest.raises(SnapshotTooOld):
        digest(reader.sqlite)
    reader.sqlite.execute("ROLLBACK")
    assert volume.vfs.state.versions_bytes == 0
    assert digest(reader.sqlite) == digest(writer.sqlite)


def test_concurrent_readers_always_see_a_consistent_total() -> None:
    """The bank invariant under a committing writer and readers on other threads, with
    tiny reader caches so that most reads go through the VFS and its old versions."""
    volume = Volume()
    writer = bank(volume)
    errors: list[BaseException] = []
    rounds = [0] * 3
    stop = threading.Event()

    def read(seed: int) -> None:
        reader = volume.reader(cache_pages=10)
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                reader.sqlite.execute("BEGIN")
                total = reader.sqlite.execute("SELECT sum(balance) FROM account").fetchall()
                lookup = rng.randrange(ACCOUNTS)
                reader.sqlite.execute("SELECT * FROM account WHERE id = ?", (lookup,)).fetchall()
                again = reader.sqlite.execute("SELECT sum(balance) FROM account").fetchall()
                reader.sqlite.execute("COMMIT")
                assert total == again == [(TOTAL,)], (total, again)
                rounds[seed] += 1
        except BaseException as error:
            errors.append(error)
        finally:
            reader.close()

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    rng = random.Random(11)
    try:
        for _ in range(300):
            transfer(writer.sqlite, rng)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[0]
    assert min(rounds) > 0, rounds
    assert writer.sqlite.execute("SELECT sum(balance) FROM account").fetchall() == [(TOTAL,)]
    assert volume.vfs.state.versions_bytes == 0
