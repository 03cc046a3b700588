"""Opening SQLite connections on the volume VFS, with the settings the design requires.

A connection must be used by one thread at a time, and never on the event loop's
thread (a VFS read may wait for storage).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

import apsw

from borealis.errors import SerializationFailure
from borealis.redo import PAGE_SIZE_BYTES
from compute_node.engine import functions
from compute_node.engine.vfs import URI_CONNECTION_PARAMETER, VolumeFile, VolumeVFS

CACHE_PAGES_DEFAULT = 2000
BUSY_TIMEOUT_MS_DEFAULT = 5000
ROLLBACK_HOOK_ID = "borealis.engine.discard"

_tokens = itertools.count(1)


class LockingMode(Enum):
    EXCLUSIVE = "EXCLUSIVE"
    """Locks taken once and kept: no lock or change-counter callbacks per transaction.
    For the volume's one writing connection (and the only mode that makes a
    cache-hot statement callback-free)."""
    NORMAL = "NORMAL"
    """Locks per transaction: each read transaction pins a fresh read point."""


@dataclass(slots=True)
class EngineConnection:
    """An SQLite connection on the volume and its main database file."""

    sqlite: apsw.Connection
    file: VolumeFile

    def close(self) -> None:
        self.sqlite.close()

    def serialization_failure(self, error: apsw.BusyError) -> SerializationFailure | None:
        """The SerializationFailure a BusyError stands for, if the write lock was
        refused because the transaction's snapshot is stale; else None (plain busy)."""
        if not self.file.snapshot_conflict:
            return None
        return SerializationFailure(
            "could not serialize access: the transaction read an older snapshot",
            read_point=self.file.read_point,
        )


def open_connection(
    vfs: VolumeVFS,
    *,
    writable: bool,
    locking_mode: LockingMode,
    cache_pages: int = CACHE_PAGES_DEFAULT,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS_DEFAULT,
) -> EngineConnection:
    """Opens a connection on the volume: writable (the writer) or read-only (a reader).

    Settings: journal_mode=MEMORY (the rollback journal never touches the volume or
    a local disk), temp_store=MEMORY, synchronous=OFF (durability is the quorum's,
    after the commit point), page_size=4096 (it takes effect when a new volume's
    first page is written), SQLite's own page cache of `cache_pages` pages.
    """
    assert cache_pages > 0, cache_pages
    token = f"{vfs.name}-{next(_tokens)}"
    flags = apsw.SQLITE_OPEN_URI | (
        apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        if writable
        else apsw.SQLITE_OPEN_READONLY
    )
    sqlite = apsw.Connection(
        f"file:volume?{URI_CONNECTION_PARAMETER}={token}", flags=flags, vfs=vfs.name
    )
    try:
        file = vfs.take_opened(token)
        # A transaction that ends without a commit point discards its writes; in
        # EXCLUSIVE mode the rollback hook is the only signal of that.
        sqlite.set_rollback_hook(file.discard_transaction, id=ROLLBACK_HOOK_ID)
        _configure(sqlite, writable, locking_mode, cache_pages, busy_timeout_ms)
    except BaseException:
        sqlite.close()
        raise
    return EngineConnection(sqlite, file)


def _configure(
    sqlite: apsw.Connection,
    writable: bool,
    locking_mode: LockingMode,
    cache_pages: int,
    busy_timeout_ms: int,
) -> None:
    # Before anything reads the volume: the journal mode must be MEMORY before the
    # first write transaction, or SQLite would open a journal file (refused).
    if writable:
        sqlite.pragma("page_size", PAGE_SIZE_BYTES)
    journal_mode = sqlite.pragma("journal_mode", "MEMORY")
    assert journal_mode == "memory", journal_mode
    sqlite.pragma("temp_store", "MEMORY")
    # Enforced as PostgreSQL enforces them (SQLite's default is off).
    sqlite.pragma("foreign_keys", True)
    sqlite.pragma("synchronous", "OFF")
    sqlite.pragma("cache_size", cache_pages)
    mode = sqlite.pragma("locking_mode", locking_mode.value)
    assert mode == locking_mode.value.lower(), mode
    sqlite.set_busy_timeout(busy_timeout_ms)
    # PostgreSQL's catalog tables and functions, for the SQL front's translations.
    functions.register(sqlite)
