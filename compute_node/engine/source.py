"""The engine's only view of the volume: the PageSource protocol and what a commit hands over.

The engine (SQLite and the volume VFS) runs on SQLite worker threads and never does
network I/O itself. Everything it needs from the volume goes through a PageSource,
which the volume client implements (compute_node/volume/) and unit tests and
benchmarks fake in memory (compute_node/engine/memory.py).

Pages are numbered from 0: page `n` holds the volume's bytes
[n * PAGE_SIZE_BYTES, (n + 1) * PAGE_SIZE_BYTES), so SQLite's page number is n + 1.
A read point is an LSN at which a read transaction looks at the volume; the engine
only ever uses CPLs (or LSN_NONE for an empty volume) as read points.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

from borealis.ids import Lsn
from borealis.redo import PAGE_SIZE_BYTES, Kind

# NamedTuples rather than frozen dataclasses: a few are built on every commit, and
# a frozen dataclass costs more than twice as much to create.


class PageWrite(NamedTuple):
    """One page changed by a commit: its redo payload and its full new image."""

    page: int
    kind: Kind
    """DELTA (payload = redo.delta_payload ranges against the page's image at the
    commit's base) or IMAGE (payload = the new image; pages that did not exist at the
    base, and pages whose delta would not be smaller than the image)."""
    payload: bytes
    image: bytes
    """The page's image after the commit, for the buffer cache: the volume client
    caches it tagged with the record's LSN instead of re-applying the delta."""


class CommitChanges(NamedTuple):
    """The changes of one SQLite transaction: one commit group (MTR).

    The volume client turns it into redo records in this order: one record per entry
    of `pages` (ascending page numbers), then a SIZE record if `page_count` is not
    None; the last record is the CPL and carries `commit_time_us`.
    """

    base: Lsn
    """The read point the deltas were computed against: the newest commit before this one."""
    pages: tuple[PageWrite, ...]
    page_count: int | None
    """The volume's new page count, or None when it did not change. Pages at or above
    a new, smaller count are gone; pages at or above the old count are IMAGE writes."""
    commit_time_us: int
    pages_dirty: int
    """Pages SQLite wrote in the transaction (some may have produced no change)."""

    @property
    def redo_payload_bytes(self) -> int:
        return sum(len(write.payload) for write in self.pages)

    @property
    def dirty_bytes(self) -> int:
        return self.pages_dirty * PAGE_SIZE_BYTES

    def records(self) -> Iterator[tuple[int, Kind, bytes]]:
        """(page, kind, payload) of each record of the group, in LSN order; a SIZE
        record's `page` is the new page count and its payload is empty."""
        for write in self.pages:
            yield write.page, write.kind, write.payload
        if self.page_count is not None:
            yield self.page_count, Kind.SIZE, b""


class PageSource(Protocol):
    """The volume as the engine sees it. Implemented by the volume client.

    Threads: `read_page` is called concurrently from several SQLite worker threads;
    `commit` from one thread at a time (the holder of the volume's write lock), and
    never concurrently with another commit. `lsn_newest` and `page_count` are called
    once, when the engine opens the volume; from then on the engine is the only
    writer and tracks both itself.
    """

    page_size: int
    """Always PAGE_SIZE_BYTES (4096): SQLite's page size is fixed at volume creation."""

    def lsn_newest(self) -> Lsn:
        """The newest commit (CPL) of the volume: after recovery, the VDL. LSN_NONE
        for a new, empty volume."""
        ...

    def page_count(self) -> int:
        """The volume's page count at `lsn_newest()`; 0 for a new volume."""
        ...

    def read_page(self, page: int, read_point: Lsn) -> bytes:
        """The page's PAGE_SIZE_BYTES image as of `read_point`. Blocking: called from a
        SQLite worker thread, it may wait for storage (GetPage@LSN) on a cache miss.

        A newer version than the read point's is allowed only if it was produced by a
        `commit` after the read point: the engine keeps the older images it still
        needs for its pinned read points (so a source holding one version per page
        may return its cached newest, and on a miss read storage at
        min(read_point, VDL)). A page never written, or at or beyond the page count,
        reads as zeros. Raise a BorealisError (e.g. Unavailable) when the page cannot
        be read; SQLite reports an I/O error for the statement.
        """
        ...

    def admit(self, changes: CommitChanges) -> None:
        """Called just before the commit point with the group about to commit; raise
        (a BorealisError) to refuse it. SQLite then rolls the transaction back
        cleanly and the statement fails with the error. This is the place for
        everything that can fail: a fenced or stopped writer, and back-pressure
        (wait, bounded, while the group would pass the LAL or the shipping queues
        are full; then raise). Called on the SQLite worker thread, without the
        engine's volume lock: reads and pins of other connections go on meanwhile.
        """
        ...

    def commit(self, changes: CommitChanges) -> Lsn:
        """Hands an admitted group over at the commit point and returns its CPL.

        Called at SQLITE_FCNTL_COMMIT_PHASETWO with the engine's volume lock held,
        after `admit`. Usually `changes` is the admitted object; when SQLite changed
        the file after admitting (VACUUM truncates it after its sync) the engine
        recomputes the group and hands that over without a second admit, so admit
        must not reserve exact sizes. It must not wait for the
        network, for durability or for back-pressure, and must not fail. It
        allocates the group's LSNs, makes its page images readable (`read_page`) at
        the CPL, and queues the records for shipping; the session waits for
        VDL >= CPL afterwards, outside SQLite. The CPL is above every earlier one.
        If it raises anyway, SQLite keeps the transaction's pages in its cache, so
        the engine marks the connection broken (it must be closed); the source must
        then have accepted nothing.
        """
        ...
