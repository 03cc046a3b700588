"""compute_node/engine: how many Python VFS callbacks SQLite makes per statement.

Every callback is Python on the hot path (DESIGN.md section 4). The writer runs in
locking_mode=EXCLUSIVE: a cache-hot point select makes none, and a single-row
insert makes one xWrite per changed page plus two xFileControl (the sync that
prepares the commit, and the commit point). In NORMAL mode every transaction adds
the lock sequence: lock, hot-journal and WAL checks, the change counter read, the
file size, unlock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from compute_node.engine import EngineConnection, LockingMode, open_connection
from compute_node.engine.diagnostics import CountingVolumeFile, CountingVolumeVFS
from compute_node.engine.memory import MemoryPageSource

pytestmark = pytest.mark.unit

ROWS = 2000
REPEAT = 20


def setup(mode: LockingMode) -> tuple[CountingVolumeVFS, EngineConnection]:
    vfs = CountingVolumeVFS(MemoryPageSource())
    writer = open_connection(vfs, writable=True, locking_mode=mode)
    writer.sqlite.execute(
        "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price INTEGER);"
        "CREATE INDEX item_name ON item(name)"
    )
    with writer.sqlite:
        writer.sqlite.executemany(
            "INSERT INTO item VALUES(?, ?, ?)", ((i, f"name-{i:08d}", i) for i in range(ROWS))
        )
    return vfs, writer


def callbacks_per_call(
    vfs: CountingVolumeVFS, connection: EngineConnection, call: Callable[[int], object]
) -> Counter[str]:
    """Callbacks (file and VFS) per call, averaged over REPEAT calls after a warm-up
    that reads the same pages (cache-hot)."""
    for index in range(REPEAT):
        call(-1 - index)
    file = connection.file
    assert isinstance(file, CountingVolumeFile)
    file.calls.clear()
    vfs.calls.clear()
    for index in range(REPEAT):
        call(index)
    total = file.calls + vfs.calls
    return Counter({name: count / REPEAT for name, count in total.items()})


def point_select(connection: EngineConnection) -> Callable[[int], object]:
    def call(index: int) -> object:
        return connection.sqlite.execute(
            "SELECT name FROM item WHERE id = ?", (abs(index) * 97 % ROWS,)
        ).fetchall()

    return call


def single_row_insert(connection: EngineConnection) -> Callable[[int], object]:
    def call(index: int) -> object:
        row = ROWS + REPEAT + index  # the warm-up inserts the rows below
        return connection.sqlite.execute(
            "INSERT INTO item VALUES(?, ?, 1)", (row, f"name-{row:08d}")
        )

    return call


def test_exclusive_writer_point_select_makes_no_callback() -> None:
    vfs, writer = setup(LockingMode.EXCLUSIVE)
    assert callbacks_per_call(vfs, writer, point_select(writer)).total() == 0


def test_exclusive_writer_single_row_insert_makes_one_write_per_page_and_two_controls() -> None:
    vfs, writer = setup(LockingMode.EXCLUSIVE)
    calls = callbacks_per_call(vfs, writer, single_row_insert(writer))
    # The table's leaf and the index's leaf (appends: occasionally a new page too).
    assert 2 <= calls["xWrite"] <= 2.5
    assert calls["xFileControl"] == 2
    assert calls.total() == calls["xWrite"] + calls["xFileControl"]


def test_normal_mode_adds_the_per_transaction_lock_sequence() -> None:
    vfs, writer = setup(LockingMode.NORMAL)
    select = callbacks_per_call(vfs, writer, point_select(writer))
    assert select == {
        "xLock": 1,
        "xAccess": 2,  # hot journal? WAL file?
        "xRead": 1,  # the change counter
        "xFileSize": 1,
        "xDeviceCharacteristics": 1,
        "xUnlock": 1,
    }
    insert = callbacks_per_call(vfs, writer, single_row_insert(writer))
    # NORMAL mode also bumps the change counter: page 1 is written every commit.
    assert insert["xWrite"] >= 3
    assert insert.total() >= 14


def test_a_reader_pays_the_lock_sequence_per_transaction_not_per_statement() -> None:
    vfs, writer = setup(LockingMode.EXCLUSIVE)
    reader = open_connection(vfs, writable=False, locking_mode=LockingMode.NORMAL)
    autocommit = callbacks_per_call(vfs, reader, point_select(reader))
    assert autocommit.total() == 7
    reader.sqlite.execute("BEGIN")
    inside = callbacks_per_call(vfs, reader, point_select(reader))
    reader.sqlite.execute("COMMIT")
    assert inside.total() == 0
