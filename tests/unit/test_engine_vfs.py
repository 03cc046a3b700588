"""compute_node/engine: the volume VFS's write path against an in-memory PageSource.

Every commit group is checked on its own terms: its encoded records, applied to the
previous page images (redo.materialise), must give exactly the pages SQLite wrote
in that transaction, and nothing else may change.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from borealis import redo
from borealis.errors import Unavailable
from borealis.ids import Lsn
from borealis.redo import PAGE_SIZE_BYTES
from compute_node.engine import (
    EngineConnection,
    LockingMode,
    VolumeFile,
    VolumeVFS,
    open_connection,
)
from compute_node.engine.diagnostics import CountingVolumeFile
from compute_node.engine.memory import MemoryPageSource

pytestmark = pytest.mark.unit

MODES = [LockingMode.EXCLUSIVE, LockingMode.NORMAL]


class RecordingVolumeFile(CountingVolumeFile):
    """Keeps, for each commit point, the pages SQLite wrote in the transaction."""

    def __init__(self, state, writable: bool) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state, writable)
        self.written: list[tuple[dict[int, bytes], int]] = []

    def _commit(self) -> None:
        dirty, page_count = dict(self._dirty), self._page_count
        commits = self.commits
        super()._commit()
        if self.commits > commits:
            self.written.append((dirty, page_count))


class Replica:
    """Page images rebuilt from encoded records only, as a storage node would."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}
        self.page_count = 0
        self.lsn_last = Lsn(0)

    def apply_group(self, group: list[bytes]) -> None:
        for index, data in enumerate(group):
            _, lsn, prev_volume, _, _, page, kind, flags, commit_us, _ = redo.check(data)
            assert lsn == self.lsn_last + 1 and prev_volume == self.lsn_last
            self.lsn_last = Lsn(lsn)
            is_last = index == len(group) - 1
            assert bool(flags & redo.FLAG_CPL) == is_last, "the CPL flag is on the last record only"
            assert (commit_us > 0) == is_last
            if kind == redo.KIND_SIZE:
                assert is_last, "a SIZE record ends its group"
                self.page_count = page
                self.pages = {p: image for p, image in self.pages.items() if p < page}
            else:
                if kind == redo.KIND_DELTA:
                    assert page in self.pages, "a DELTA applies to an existing page"
                self.pages[page] = redo.materialise(self.pages.get(page), [data])
                assert page < max(self.page_count, page + 1)

    def read(self, page: int) -> bytes:
        return self.pages.get(page, redo.ZERO_PAGE)


class ReplicaSource:
    """A read-only PageSource over a Replica, to reopen the database from records."""

    page_size = PAGE_SIZE_BYTES

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def lsn_newest(self) -> Lsn:
        return self._replica.lsn_last

    def page_count(self) -> int:
        return self._replica.page_count

    def read_page(self, page: int, read_point: Lsn) -> bytes:
        return self._replica.read(page)

    def commit(self, changes) -> Lsn:  # type: ignore[no-untyped-def]
        raise AssertionError("the replica is read-only")


class Volume:
    """A MemoryPageSource, a VFS on it, and a checker that replays every group."""

    def __init__(self, file_class: type[VolumeFile] = RecordingVolumeFile) -> None:
        self.source = MemoryPageSource(pages_per_pg=16)
        self.vfs = VolumeVFS(self.source, file_class=file_class)
        self.replica = Replica()
        self._groups_checked = 0

    def connect(
        self, mode: LockingMode = LockingMode.EXCLUSIVE, writable: bool = True, **options: int
    ) -> EngineConnection:
        return open_connection(self.vfs, writable=writable, locking_mode=mode, **options)

    def check_groups(self, file: RecordingVolumeFile) -> None:
        """Replays the groups shipped since the last check; each must reproduce the
        pages SQLite wrote in its transaction, and leave every other page alone."""
        groups = self.source.groups[self._groups_checked :]
        assert len(groups) == len(file.written) - self._groups_checked
        for group, (written, page_count) in zip(
            groups, file.written[self._groups_checked :], strict=True
        ):
            before = dict(self.replica.pages)
            self.replica.apply_group(group)
            assert self.replica.page_count == page_count
            for page in range(page_count):
                expected = written.get(page, before.get(page, redo.ZERO_PAGE))
                assert self.replica.read(page) == expected, f"page {page}"
        self._groups_checked = len(self.source.groups)
        newest = self.source.lsn_newest()
        for page in range(self.source.page_count()):
            assert self.source.read_page(page, newest) == self.replica.read(page)

    def volume_bytes(self) -> bytes:
        newest = self.source.lsn_newest()
        return b"".join(
            self.source.read_page(page, newest) for page in range(self.source.page_count())
        )


def create_schema(sqlite: apsw.Connection) -> None:
    sqlite.execute(
        "CREATE TABLE account(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER,"
        " note TEXT);"
        "CREATE INDEX account_owner ON account(owner);"
        "CREATE TABLE ledger(id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER);"
        "CREATE INDEX ledger_account ON ledger(account, amount);"
    )


def insert_accounts(sqlite: apsw.Connection, first: int, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with sqlite:
        sqlite.executemany(
            "INSERT INTO account VALUES(?, ?, ?, ?)",
            (
                (i, f"owner-{rng.randrange(10**9)}", rng.randrange(10**6), "n" * rng.randrange(80))
                for i in range(first, first + count)
            ),
        )


def table_digest(sqlite: apsw.Connection) -> list[tuple]:
    return sqlite.execute(
        "SELECT count(*), sum(balance), sum(length(note)), min(owner), max(owner) FROM account"
    ).fetchall()


def statements() -> Iterator[str]:
    """A mixed workload: schema, inserts in transactions, updates, deletes."""
    yield (
        "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price INTEGER, blob BLOB);"
        "CREATE INDEX item_name ON item(name);"
        "CREATE UNIQUE INDEX item_price ON item(price, id)"
    )
    for batch in range(6):
        rows = ",".join(
            f"({batch * 300 + i}, 'name {i * 7919 % 1000}', {i * 31 % 977}, zeroblob({i % 9 * 400}))"
            for i in range(300)
        )
        yield f"BEGIN; INSERT INTO item VALUES {rows}; COMMIT"
    yield "UPDATE item SET price = price + 1000 WHERE id % 7 = 0"
    yield "DELETE FROM item WHERE id % 3 = 0"
    yield "INSERT INTO item VALUES(100000, 'big', 5, zeroblob(20000))"
    yield "CREATE TABLE later(x)"
    yield "DROP INDEX item_name"


# -- the write path ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_commit_groups_reproduce_the_pages_sqlite_wrote(mode: LockingMode) -> None:
    volume = Volume()
    writer = volume.connect(mode)
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 2000)
    for i in range(0, 2000, 97):
        writer.sqlite.execute("UPDATE account SET balance = balance - 1 WHERE id = ?", (i,))
        writer.sqlite.execute("INSERT INTO ledger(account, amount) VALUES(?, -1)", (i,))
    writer.sqlite.execute("DELETE FROM account WHERE id BETWEEN 100 AND 600")
    volume.check_groups(writer.file)
    assert len(volume.source.groups) == writer.file.commits > 40
    kinds = {redo.Kind(data[redo.KIND_OFFSET]) for group in volume.source.groups for data in group}
    assert kinds == {redo.Kind.DELTA, redo.Kind.IMAGE, redo.Kind.SIZE}

    # A fresh connection on a volume rebuilt from the records alone sees the same data.
    replayed = VolumeVFS(ReplicaSource(volume.replica))
    reader = open_connection(replayed, writable=False, locking_mode=LockingMode.NORMAL)
    assert table_digest(reader.sqlite) == table_digest(writer.sqlite)
    assert reader.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert reader.sqlite.execute("SELECT count(*) FROM ledger").fetchall() == [(21,)]


def test_volume_is_byte_identical_to_sqlite_on_a_local_file(tmp_path: Path) -> None:
    """SQLite is deterministic: with the same settings on its own unix VFS it writes
    the same file, so the volume must hold exactly the same bytes."""
    volume = Volume()
    writer = volume.connect(LockingMode.EXCLUSIVE)
    reference = apsw.Connection(str(tmp_path / "reference.db"))
    for pragma in ("journal_mode=MEMORY", "temp_store=MEMORY", "synchronous=OFF"):
        reference.execute(f"PRAGMA {pragma}")
    reference.execute("PRAGMA locking_mode=EXCLUSIVE")
    for sql in statements():
        writer.sqlite.execute(sql)
        reference.execute(sql)
    reference.close()
    assert volume.volume_bytes() == (tmp_path / "reference.db").read_bytes()
    volume.check_groups(writer.file)


def test_reopening_the_volume_after_a_restart_sees_every_commit() -> None:
    volume = Volume()
    writer = volume.connect()
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 500)
    digest = table_digest(writer.sqlite)
    writer.close()
    # A new VFS (a restarted instance) on the same source reopens the volume.
    restarted = VolumeVFS(volume.source, file_class=RecordingVolumeFile)
    again = open_connection(restarted, writable=True, locking_mode=LockingMode.EXCLUSIVE)
    assert table_digest(again.sqlite) == digest
    assert again.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert again.sqlite.pragma("page_size") == PAGE_SIZE_BYTES
    insert_accounts(again.sqlite, 500, 10)
    assert table_digest(again.sqlite)[0][0] == 510


def test_a_new_volume_is_created_with_4096_byte_pages() -> None:
    volume = Volume()
    writer = volume.connect()
    writer.sqlite.execute("CREATE TABLE t(x)")
    page_one = volume.source.read_page(0, volume.source.lsn_newest())
    assert page_one.startswith(b"SQLite format 3\x00")
    assert struct.unpack(">H", page_one[16:18])[0] == PAGE_SIZE_BYTES
    # The first group creates the file: IMAGE records for new pages and its size.
    first = volume.source.groups[0]
    assert [data[redo.KIND_OFFSET] for data in first] == [redo.KIND_IMAGE] * 2 + [redo.KIND_SIZE]


# -- rollback -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rollback_discards_the_transaction(mode: LockingMode) -> None:
    volume = Volume()
    writer = volume.connect(mode)
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 300)
    groups, digest, image = (
        len(volume.source.groups),
        table_digest(writer.sqlite),
        volume.volume_bytes(),
    )
    writer.sqlite.execute("BEGIN")
    writer.sqlite.execute("UPDATE account SET balance = 0")
    writer.sqlite.execute("INSERT INTO account VALUES(5000, 'x', 1, '')")
    writer.sqlite.execute("ROLLBACK")
    assert len(volume.source.groups) == groups
    assert table_digest(writer.sqlite) == digest
    assert volume.volume_bytes() == image


@pytest.mark.parametrize("mode", MODES)
def test_rollback_after_a_cache_spill_ships_nothing(mode: LockingMode) -> None:
    """With a small page cache SQLite writes pages in the middle of a big transaction
    (a spill); a ROLLBACK must leave the volume and the shipped groups untouched."""
    volume = Volume()
    writer = volume.connect(mode, cache_pages=10)
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 300)
    groups, digest, image = (
        len(volume.source.groups),
        table_digest(writer.sqlite),
        volume.volume_bytes(),
    )
    page_count = volume.source.page_count()
    writer.file.calls.clear()
    writer.sqlite.execute("BEGIN")
    insert_accounts_in_transaction(writer.sqlite, 10_000, 3000)
    writer.sqlite.execute("UPDATE account SET balance = -1 WHERE id < 300")
    spilled = writer.file.calls["xWrite"]
    assert spilled > 50, "the transaction must have spilled pages before its end"
    assert writer.file._page_count > page_count, "and grown the file"
    writer.sqlite.execute("ROLLBACK")
    assert writer.file.rollbacks >= 1
    assert len(volume.source.groups) == groups, "nothing shipped"
    assert volume.volume_bytes() == image, "nothing committed changed"
    assert table_digest(writer.sqlite) == digest
    assert writer.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # The next transaction ships only its own changes.
    writer.sqlite.execute("UPDATE account SET balance = 7 WHERE id = 3")
    assert len(volume.source.groups) == groups + 1
    assert volume.source.page_count() == page_count
    volume.check_groups(writer.file)


def insert_accounts_in_transaction(sqlite: apsw.Connection, first: int, count: int) -> None:
    sqlite.executemany(
        "INSERT INTO account VALUES(?, ?, ?, ?)",
        ((i, f"spill-{i * 7919 % 10007}", i, "s" * 60) for i in range(first, first + count)),
    )


def test_a_failed_statement_in_autocommit_changes_nothing() -> None:
    volume = Volume()
    writer = volume.connect()
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 10)
    groups = len(volume.source.groups)
    with pytest.raises(apsw.ConstraintError):
        writer.sqlite.execute("INSERT INTO account VALUES(1, 'dup', 1, '')")
    assert len(volume.source.groups) == groups
    volume.check_groups(writer.file)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cache_pages", [2000, 10])
def test_a_refused_commit_rolls_back_cleanly(mode: LockingMode, cache_pages: int) -> None:
    """PageSource.admit may refuse a group just before the commit point: SQLite then
    rolls back, keeps a consistent cache, and the connection goes on working."""
    volume = Volume()
    writer = volume.connect(mode, cache_pages=cache_pages)
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 2000)
    digest, groups = table_digest(writer.sqlite), len(volume.source.groups)
    volume.source.fail_next_admit = Unavailable("no write quorum")
    writer.sqlite.execute("BEGIN")
    writer.sqlite.execute("UPDATE account SET note = 'changed' WHERE id < 1500")
    writer.sqlite.execute("INSERT INTO account VALUES(9999, 'x', 1, '')")
    with pytest.raises(Unavailable):
        writer.sqlite.execute("COMMIT")
    assert not writer.sqlite.in_transaction
    assert table_digest(writer.sqlite) == digest
    volume.source.fail_next_admit = Unavailable("no write quorum")
    with pytest.raises(Unavailable):
        writer.sqlite.execute("DELETE FROM account WHERE id < 100")  # autocommit
    assert table_digest(writer.sqlite) == digest
    assert len(volume.source.groups) == groups
    assert writer.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    writer.sqlite.execute("UPDATE account SET balance = 1 WHERE id = 6")
    volume.check_groups(writer.file)
    fresh = volume.connect(LockingMode.NORMAL, writable=False)
    assert table_digest(fresh.sqlite) == table_digest(writer.sqlite)


def test_a_commit_that_fails_at_the_commit_point_breaks_the_connection() -> None:
    """PageSource.commit must not fail; if it does, SQLite's cache already holds the
    transaction, so the file refuses further use and the connection is reopened."""
    volume = Volume()
    writer = volume.connect()
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 100)
    digest = table_digest(writer.sqlite)
    volume.source.fail_next_commit = Unavailable("shipper stopped")
    with pytest.raises(Unavailable):
        writer.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 5")
    assert writer.file.broken is not None
    with pytest.raises(apsw.IOError):
        writer.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 6")
    writer.close()
    reopened = volume.connect()
    assert table_digest(reopened.sqlite) == digest
    reopened.sqlite.execute("UPDATE account SET balance = 0 WHERE id = 6")
    assert reopened.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- redo size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        # A transfer: the row keeps its size. (A row that grows may make SQLite
        # defragment its page, which rewrites most of it.)
        "UPDATE account SET balance = balance + ?1 % 100 WHERE id = ?2",
        # The row's index entry moves to another leaf: two index pages change.
        "UPDATE account SET owner = 'owner-' || ?1 WHERE id = ?2",
    ],
    ids=["column", "indexed-column"],
)
def test_single_row_update_redo_is_10x_smaller_than_the_dirty_pages(sql: str) -> None:
    volume = Volume()
    writer = volume.connect()
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 5000)
    rng = random.Random(7)
    dirty_bytes = redo_bytes = 0
    for row in range(0, 5000, 100):
        writer.sqlite.execute(sql, (rng.randrange(10**9), row))
        changes = volume.source.changes[-1]
        assert changes.page_count is None and changes.pages_dirty >= 1
        dirty_bytes += changes.dirty_bytes
        redo_bytes += sum(len(data) for data in volume.source.groups[-1])  # headers too
    assert dirty_bytes >= 10 * redo_bytes, (dirty_bytes, redo_bytes)
    volume.check_groups(writer.file)


# -- files SQLite must not open -------------------------------------------------------------


def test_sorts_indexes_and_vacuum_need_no_other_file() -> None:
    """temp_store=MEMORY and journal_mode=MEMORY keep sorter, temp and journal files
    in memory: big sorts, index builds and VACUUM run with a tiny page cache."""
    volume = Volume()
    writer = volume.connect(cache_pages=10)
    create_schema(writer.sqlite)
    insert_accounts(writer.sqlite, 0, 5000)
    ordered = writer.sqlite.execute(
        "SELECT note, owner FROM account ORDER BY note, balance"
    ).fetchall()
    assert len(ordered) == 5000
    writer.sqlite.execute("CREATE INDEX account_note ON account(note, balance)")
    writer.sqlite.execute("CREATE TEMP TABLE scratch AS SELECT * FROM account")
    writer.sqlite.execute("DELETE FROM account WHERE id >= 1000")
    pages_before = volume.source.page_count()
    writer.sqlite.execute("VACUUM")
    assert volume.source.page_count() < pages_before, "VACUUM shrank the volume (a SIZE record)"
    assert volume.source.groups[-1][-1][redo.KIND_OFFSET] == redo.KIND_SIZE
    assert writer.sqlite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    volume.check_groups(writer.file)


def test_a_journal_file_is_refused() -> None:
    volume = Volume()
    writer = volume.connect(LockingMode.NORMAL)
    writer.sqlite.execute("CREATE TABLE t(x)")
    # WAL needs shared memory, which the volume file does not offer: SQLite stays.
    assert writer.sqlite.pragma("journal_mode", "WAL") == "memory"
    assert writer.sqlite.pragma("journal_mode", "DELETE") == "delete"
    with pytest.raises(apsw.CantOpenError):
        writer.sqlite.execute("INSERT INTO t VALUES(1)")
    assert writer.sqlite.pragma("journal_mode", "MEMORY") == "memory"
    writer.sqlite.execute("INSERT INTO t VALUES(2)")
    assert writer.sqlite.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_attaching_another_database_through_the_volume_vfs_is_refused() -> None:
    volume = Volume()
    writer = volume.connect()
    with pytest.raises(apsw.CantOpenError):
        writer.sqlite.execute("ATTACH 'file:other' AS other")
    writer.sqlite.execute("ATTACH ':memory:' AS scratch")  # memory: no VFS file
    writer.sqlite.execute("CREATE TABLE scratch.t(x)")


def test_a_reading_connection_cannot_write() -> None:
    volume = Volume()
    writer = volume.connect()
    writer.sqlite.execute("CREATE TABLE t(x)")
    reader = volume.connect(LockingMode.NORMAL, writable=False)
    with pytest.raises(apsw.ReadOnlyError):
        reader.sqlite.execute("INSERT INTO t VALUES(1)")
