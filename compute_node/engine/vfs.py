"""The volume VFS: SQLite's main database file, backed by a PageSource (DESIGN.md section 4).

Every VFS callback is Python on SQLite's hot path, so the design keeps them few:

- The writing connection runs with locking_mode=EXCLUSIVE. It takes its locks once
  and keeps them, and SQLite then trusts its own page cache: a cache-hot point
  select makes no callback at all, and a single-row insert makes one xWrite per
  changed page plus two xFileControl (SQLITE_FCNTL_SYNC, then the commit point).
  It is the volume's only writer, so its view is always the newest commit.
- Reading connections (opened read-only) use locking_mode=NORMAL: each read
  transaction takes SHARED, which pins a read point, and SQLite re-checks page 1's
  change counter. The writer in EXCLUSIVE mode stops bumping that counter, so a
  reading file presents bytes 24-27 and 92-95 of page 1 derived from its read
  point: SQLite drops its page cache exactly when the read point moved.

A transaction's writes go to the file's dirty map; nothing leaves the process
before the commit point, xFileControl(SQLITE_FCNTL_COMMIT_PHASETWO). There each
dirty page is diffed against its committed image into a DELTA (or an IMAGE for a
page the volume did not have), size changes are noted, and the group is handed to
PageSource.commit. A transaction that ends without a commit point (ROLLBACK, also
after SQLite spilled pages mid-transaction) discards the dirty map: on the
connection's rollback hook, and in NORMAL mode also when the write lock is dropped.

Locks are the engine's own, between the connections of this process: one write
lock (RESERVED and above), and SHARED locks that never block the writer, because
every file reads at its pinned read point. The old page images that pinned readers
still need are kept by VolumeState (bounded; see SnapshotTooOld). A file whose
snapshot is older than the newest commit cannot take the write lock: xLock raises
BusyError and sets `snapshot_conflict` (the session layer reports SQLSTATE 40001).

Only the main database file goes through this VFS. journal_mode=MEMORY keeps the
rollback journal (and statement journals) in memory, and temp_store=MEMORY keeps
temporary databases, sorter and materialisation files in memory, so SQLite has no
other file to open; xOpen refuses any other kind loudly (SQLITE_CANTOPEN) rather
than putting a journal on a local disk the storage tier does not know about.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

import apsw

from borealis.errors import SnapshotTooOld
from borealis.ids import LSN_NONE, Lsn
from borealis.redo import PAGE_SIZE_BYTES, ZERO_PAGE, Kind, delta_payload, diff
from compute_node.engine.source import CommitChanges, PageSource, PageWrite

# SQLite's lock levels (sqlite3.h SQLITE_LOCK_*).
LOCK_NONE = apsw.SQLITE_LOCK_NONE
LOCK_SHARED = apsw.SQLITE_LOCK_SHARED
LOCK_RESERVED = apsw.SQLITE_LOCK_RESERVED

FCNTL_COMMIT_PHASETWO = apsw.SQLITE_FCNTL_COMMIT_PHASETWO
FCNTL_SYNC = apsw.SQLITE_FCNTL_SYNC

# Page 1's change counter and its "version-valid-for" copy. SQLite compares the 16
# bytes at 24 with what it cached to decide whether its page cache is stale, and
# trusts the in-header page count only when both counters are equal.
CHANGE_COUNTER_OFFSET = 24
VERSION_VALID_FOR_OFFSET = 92
PAGE_SHIFT = PAGE_SIZE_BYTES.bit_length() - 1
PAGE_MASK = PAGE_SIZE_BYTES - 1
assert 1 << PAGE_SHIFT == PAGE_SIZE_BYTES

VERSIONS_BYTES_MAX_DEFAULT = 64 * 2**20

# A delta is shipped only when its payload is smaller than a page image.
DELTA_BYTES_MAX = PAGE_SIZE_BYTES - 1

URI_CONNECTION_PARAMETER = "borealis_connection"

_vfs_serial = itertools.count(1)


class VolumeState:
    """What the connections (files) of one volume share, under one lock.

    - The write lock: at most one file holds RESERVED or more.
    - Read point pins: every file holding SHARED, except the write-lock holder (it
      is at the newest commit and nobody else can commit, so it needs no old page).
    - The newest commit (CPL) and the page count there; commits go through here.
    - Old page versions for pinned read points, bounded by `versions_bytes_max`.
      When over the bound, the oldest read points expire: their files raise
      SnapshotTooOld on the next page read that misses SQLite's cache.
    - Durable reads (the writer's engine, after `start_durable_reads`): the VDL is
      pinned too, so the versions of every commit above it are kept, and a file
      with `durable_read` set reads at the VDL. Such a read sees every
      acknowledged commit and needs no durability wait: what serves reads when
      storage cannot make new commits durable (an AZ and one more node down).
    """

    def __init__(self, source: PageSource, versions_bytes_max: int) -> None:
        assert source.page_size == PAGE_SIZE_BYTES, source.page_size
        assert versions_bytes_max >= 0, versions_bytes_max
        self.source = source
        self.versions_bytes_max = versions_bytes_max
        self._lock = threading.Lock()
        self.lsn_newest: Lsn = source.lsn_newest()
        self.page_count_newest: int = source.page_count()
        self._writer: VolumeFile | None = None
        self._pins: dict[Lsn, int] = {}
        # Read points at or below this lost their old versions.
        self.lsn_expired: Lsn = LSN_NONE
        # page -> [(lsn_valid_through, image)], ascending: the image is the page's
        # version at every read point <= lsn_valid_through (and above the previous
        # entry's). Entries arrive in LSN order, so `_version_order` (oldest first)
        # drops them from the front of each page's list.
        self._versions: dict[int, list[tuple[Lsn, bytes]]] = {}
        self._version_order: deque[tuple[Lsn, int]] = deque()
        self.versions_bytes = 0
        self.commits = 0
        # Durable reads: the pinned VDL (None until started), the page count there,
        # the commits above it that changed the page count, and the lowest VDL
        # whose versions are all kept (raised when versions expire).
        self.vdl: Lsn | None = None
        self._page_count_vdl = 0
        self._page_counts: deque[tuple[Lsn, int]] = deque()
        self._lsn_versions_from: Lsn = LSN_NONE

    # -- pins -----------------------------------------------------------------------

    def pin(self) -> tuple[Lsn, int]:
        """Pins the newest read point; returns it and the page count there."""
        with self._lock:
            lsn = self.lsn_newest
            self._pins[lsn] = self._pins.get(lsn, 0) + 1
            return lsn, self.page_count_newest

    def advance(self, lsn: Lsn, page_count: int) -> None:
        """Moves the newest read point forward without a commit of this engine: a
        reader instance applied the writer's commit groups up to `lsn` (its VDL).
        Files pinned at older read points keep reading there (the source serves
        any read point at or above the PGMRPL), and a file that pins `lsn` next
        sees page 1's change counter move, so SQLite drops its page cache."""
        with self._lock:
            assert self._writer is None, "a reader instance's engine has no writing file"
            assert lsn >= self.lsn_newest, (lsn, self.lsn_newest)
            self.lsn_newest = lsn
            self.page_count_newest = page_count

    def start_durable_reads(self, vdl: Lsn) -> None:
        """Pins the VDL from now on (the writer's engine, once it is open). Commits
        made before this kept no versions: durable reads start above them."""
        with self._lock:
            assert self.vdl is None and vdl <= self.lsn_newest, (vdl, self.lsn_newest)
            self.vdl = vdl
            self._page_count_vdl = self.page_count_newest
            self._lsn_versions_from = self.lsn_newest
            self._pins[vdl] = self._pins.get(vdl, 0) + 1

    def note_vdl(self, vdl: Lsn) -> None:
        """The VDL advanced (on the volume's event loop): move the durable pin."""
        with self._lock:
            if self.vdl is None or vdl <= self.vdl:
                return
            counts = self._page_counts
            while counts and counts[0][0] <= vdl:
                self._page_count_vdl = counts.popleft()[1]
            self._pins[vdl] = self._pins.get(vdl, 0) + 1
            self._unpin_locked(self.vdl)
            self.vdl = vdl

    def pin_durable(self) -> tuple[Lsn, int]:
        """Pins the VDL for a durable read; returns it and the page count there."""
        with self._lock:
            vdl = self.vdl
            if vdl is None or vdl < self._lsn_versions_from or vdl <= self.lsn_expired:
                raise SnapshotTooOld(
                    "page versions above the VDL were dropped; a durable read waits",
                    vdl=vdl,
                    versions_bytes_max=self.versions_bytes_max,
                )
            self._pins[vdl] += 1
            return vdl, self._page_count_vdl

    def unpin(self, read_point: Lsn) -> None:
        with self._lock:
            self._unpin_locked(read_point)

    def read_point_oldest(self) -> Lsn:
        """The oldest read point in use (for the PGMRPL): the newest commit if none."""
        with self._lock:
            return min(self._pins, default=self.lsn_newest)

    def _unpin_locked(self, read_point: Lsn) -> None:
        count = self._pins[read_point] - 1
        if count:
            self._pins[read_point] = count
            return
        del self._pins[read_point]
        self._prune_locked()

    # -- the write lock ---------------------------------------------------------------

    def acquire_write(self, file: VolumeFile) -> None:
        """Gives `file` the write lock, or raises BusyError.

        SQLite retries a BusyError through its busy handler when the transaction had
        not read yet; inside a read transaction it returns SQLITE_BUSY at once.
        """
        assert file.read_point is not None, "SQLite takes SHARED before RESERVED"
        with self._lock:
            if self._writer is not None and self._writer is not file:
                raise apsw.BusyError("another connection of this instance is writing")
            if file.read_point != self.lsn_newest:
                file.snapshot_conflict = True
                raise apsw.BusyError("snapshot is older than the newest commit")
            self._writer = file
            self._unpin_locked(file.read_point)

    def release_write(self, file: VolumeFile, keep_pin: bool) -> None:
        """Takes the write lock back; the file pins its (newest) read point again
        if it still holds SHARED."""
        with self._lock:
            assert self._writer is file
            self._writer = None
            if keep_pin:
                assert file.read_point == self.lsn_newest
                self._pins[file.read_point] = self._pins.get(file.read_point, 0) + 1

    def writer_is_other_than(self, file: VolumeFile) -> bool:
        writer = self._writer
        return writer is not None and writer is not file

    # -- commits and old versions ----------------------------------------------------

    def commit(
        self,
        file: VolumeFile,
        changes: CommitChanges,
        old_images: dict[int, bytes],
        page_count_before: int,
    ) -> Lsn:
        """Hands `changes` to the source; returns the CPL.

        Under the lock, so no file pins a read point between keeping the old images
        and the source making the new ones readable.
        """
        with self._lock:
            assert self._writer is file
            assert changes.base == self.lsn_newest, (changes.base, self.lsn_newest)
            if self._pins:
                self._keep_versions_locked(changes, old_images, page_count_before)
            lsn = self.source.commit(changes)
            assert lsn > self.lsn_newest, (lsn, self.lsn_newest)
            self.lsn_newest = lsn
            if changes.page_count is not None:
                self.page_count_newest = changes.page_count
                if self.vdl is not None:
                    self._page_counts.append((lsn, changes.page_count))
            self.commits += 1
            return lsn

    def old_version(self, page: int, read_point: Lsn) -> bytes | None:
        """The page's image at `read_point` if a commit after it changed the page."""
        with self._lock:
            if read_point <= self.lsn_expired:
                raise SnapshotTooOld(
                    "old page versions of this read transaction were dropped",
                    read_point=read_point,
                    versions_bytes_max=self.versions_bytes_max,
                )
            for lsn_valid_through, image in self._versions.get(page, ()):
                if lsn_valid_through >= read_point:
                    return image
            return None

    def has_versions(self) -> bool:
        # Read without the lock: a stale answer is corrected by the caller's
        # second look (see VolumeFile._read_committed).
        return bool(self._versions) or self.lsn_expired != LSN_NONE

    def _keep_versions_locked(
        self, changes: CommitChanges, old_images: dict[int, bytes], page_count_before: int
    ) -> None:
        # Every pinned read point is <= lsn_newest, and the commit's LSNs are above
        # it: the old images are the versions those read points see.
        lsn = self.lsn_newest
        for page, image in old_images.items():
            self._keep_locked(page, lsn, image)
        if changes.page_count is not None:
            # Pages cut off by a truncation are still visible at the old read points.
            # (Reading them may wait for storage under the lock; truncations are rare:
            # VACUUM, or auto_vacuum, which Borealis leaves off.)
            for page in range(changes.page_count, page_count_before):
                self._keep_locked(page, lsn, self.source.read_page(page, lsn))
        while self.versions_bytes > self.versions_bytes_max and self._pins:
            oldest_live = min((pin for pin in self._pins if pin > self.lsn_expired), default=None)
            if oldest_live is None:
                break
            self.lsn_expired = oldest_live
            # A durable read at a VDL below the newest commit would miss versions.
            self._lsn_versions_from = self.lsn_newest
            self._prune_locked()

    def _keep_locked(self, page: int, lsn_valid_through: Lsn, image: bytes) -> None:
        self._versions.setdefault(page, []).append((lsn_valid_through, image))
        self._version_order.append((lsn_valid_through, page))
        self.versions_bytes += len(image)

    def _prune_locked(self) -> None:
        """Drops versions no live pinned read point can need: those valid only below
        the oldest live pin (all of them if there is none)."""
        live = [pin for pin in self._pins if pin > self.lsn_expired]
        oldest_live = min(live) if live else None
        if not self._pins:
            self.lsn_expired = LSN_NONE
        order = self._version_order
        while order and (oldest_live is None or order[0][0] < oldest_live):
            _, page = order.popleft()
            entries = self._versions[page]
            _, image = entries.pop(0)
            self.versions_bytes -= len(image)
            if not entries:
                del self._versions[page]


class VolumeFile:
    """The main database file of one SQLite connection.

    Used by one thread at a time (the connection's owner); shared state goes through
    VolumeState. Public attributes are for the session layer:

    - `lsn_commit_last`: the CPL of the connection's last commit (what a COMMIT waits
      for: VDL >= it); a commit that changed nothing leaves it unchanged.
    - `lsn_seen_max`: the highest LSN any read or write of the connection could have
      seen (its read points and commits): a result is released when VDL >= it.
    - `read_point`: the pinned read point while SQLite holds a lock, else None.
    - `snapshot_conflict`: set when xLock refused the write lock because the
      transaction's snapshot is older than the newest commit (SQLSTATE 40001).
    """

    def __init__(self, state: VolumeState, writable: bool) -> None:
        self._state = state
        self._source = state.source
        self.writable = writable
        # Read-only files present a change counter derived from the read point (see
        # the module docstring); a writing file must see the bytes SQLite wrote, or
        # SQLite would drop its cache after every own commit.
        self._derive_change_counter = not writable
        self._lock_level = LOCK_NONE
        self.read_point: Lsn | None = None
        self._pinned = False
        # The page count at the read point, and as this transaction sees the file.
        self._page_count_committed = 0
        self._page_count = 0
        self._dirty: dict[int, bytes] = {}
        # Bumped by every write and truncate, so the commit point can tell whether
        # the changes prepared at SQLITE_FCNTL_SYNC are still the transaction's.
        self._generation = 0
        self._prepared: tuple[CommitChanges, dict[int, bytes]] | None = None
        self._prepared_generation = 0
        self.broken: BaseException | None = None
        self.lsn_commit_last: Lsn = LSN_NONE
        self.lsn_seen_max: Lsn = LSN_NONE
        self.snapshot_conflict = False
        # Set by the session layer around a durable read (see VolumeState).
        self.durable_read = False
        self.commits = 0
        self.rollbacks = 0
        self.last_commit: CommitChanges | None = None

    # -- reads ------------------------------------------------------------------------

    def xRead(self, amount: int, offset: int) -> bytes:
        page = offset >> PAGE_SHIFT
        start = offset & PAGE_MASK
        image = self._dirty.get(page)
        if image is None:
            if page >= self._page_count:
                # A short read: APSW zero-fills and SQLite treats it as past the end.
                return b""
            if page >= self._page_count_committed:
                image = ZERO_PAGE  # extended in this transaction, never written
            else:
                image = self._read_committed(page)
                if page == 0 and self._derive_change_counter:
                    image = self._with_change_counter(image)
        if amount == PAGE_SIZE_BYTES and start == 0:
            return image
        if start + amount > PAGE_SIZE_BYTES:
            raise apsw.IOError(f"read across a page boundary: {amount} bytes at {offset}")
        return image[start : start + amount]

    def _read_committed(self, page: int) -> bytes:
        read_point = self.read_point
        assert read_point is not None, "SQLite reads only under a lock"
        state = self._state
        if not state.has_versions():
            image = self._source.read_page(page, read_point)
            # A commit may have kept an old version between the check and the read.
            if not state.has_versions():
                return image
        else:
            older = state.old_version(page, read_point)
            if older is not None:
                return older
            image = self._source.read_page(page, read_point)
        # The source may have returned a version committed after our read point;
        # that commit kept the image we need before making its own readable.
        older = state.old_version(page, read_point)
        return image if older is None else older

    def _with_change_counter(self, image: bytes) -> bytes:
        assert self.read_point is not None
        counter = (self.read_point & 0xFFFFFFFF).to_bytes(4, "big")
        return b"".join(
            (
                image[:CHANGE_COUNTER_OFFSET],
                counter,
                image[CHANGE_COUNTER_OFFSET + 4 : VERSION_VALID_FOR_OFFSET],
                counter,
                image[VERSION_VALID_FOR_OFFSET + 4 :],
            )
        )

    def xFileSize(self) -> int:
        return self._page_count << PAGE_SHIFT

    # -- writes -----------------------------------------------------------------------

    def xWrite(self, data: bytes, offset: int) -> None:
        if offset & PAGE_MASK or len(data) != PAGE_SIZE_BYTES:
            raise apsw.IOError(
                f"the volume takes whole {PAGE_SIZE_BYTES}-byte pages, "
                f"not {len(data)} bytes at {offset}"
            )
        assert self._lock_level >= LOCK_RESERVED, "SQLite writes only under the write lock"
        page = offset >> PAGE_SHIFT
        # `data` is only valid during the call: keep a copy.
        self._dirty[page] = bytes(data)
        self._generation += 1
        if page >= self._page_count:
            self._page_count = page + 1

    def xTruncate(self, newsize: int) -> None:
        if newsize & PAGE_MASK:
            raise apsw.IOError(f"truncate to {newsize} bytes: not a whole number of pages")
        assert self._lock_level >= LOCK_RESERVED
        page_count = newsize >> PAGE_SHIFT
        for page in [page for page in self._dirty if page >= page_count]:
            del self._dirty[page]
        self._page_count = page_count
        self._generation += 1

    def xSync(self, flags: int) -> None:
        # Durability is the write quorum's, reached after the commit point; with
        # synchronous=OFF SQLite does not even call this.
        pass

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op == FCNTL_COMMIT_PHASETWO:
            self._commit()
            return True
        if op == FCNTL_SYNC:
            self._prepare()
        return False  # SQLITE_NOTFOUND, which SQLite treats as done

    def _prepare(self) -> None:
        """The last step before the commit point: diff the dirty pages, and let the
        source refuse the group while SQLite can still roll back cleanly.

        SQLite sends SQLITE_FCNTL_SYNC at the end of commit phase one, after its last
        write. An error here makes SQLite roll the transaction back and keep a
        consistent cache; an error at the commit point itself would not (SQLite
        keeps the transaction's pages in its cache), so everything that may fail
        happens here. SQLite also syncs after a rollback has written the original
        pages back: then the changes are empty and nothing is asked.
        """
        self._prepared = None
        if self._lock_level < LOCK_RESERVED:
            return
        self._check_usable()
        prepared = self._changes()
        changes = prepared[0]
        if changes.pages or changes.page_count is not None:
            self._source.admit(changes)
        self._prepared = prepared
        self._prepared_generation = self._generation

    def _commit(self) -> None:
        """The commit point: hand the prepared group over. It must not fail; if the
        source raises anyway, SQLite's cache is ahead of the volume, so the file
        refuses all further use and the connection must be closed."""
        self._check_usable()
        prepared, self._prepared = self._prepared, None
        if prepared is None or self._prepared_generation != self._generation:
            # SQLite changed the file after its sync: VACUUM truncates it then.
            prepared = self._changes()
        changes, old_images = prepared
        page_count_before = self._page_count_committed
        self._dirty = {}
        if not changes.pages and changes.page_count is None:
            return  # nothing changed, or SQLite rewrote pages unchanged: nothing to ship
        try:
            lsn = self._state.commit(self, changes, old_images, page_count_before)
        except BaseException as error:
            self.broken = error
            raise
        self.read_point = lsn
        self._page_count_committed = self._page_count
        self.lsn_commit_last = lsn
        self.lsn_seen_max = lsn
        self.last_commit = changes
        self.commits += 1

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise apsw.IOError(
                f"the connection must be reopened: a commit failed at its commit point ({self.broken})"
            )

    def _changes(self) -> tuple[CommitChanges, dict[int, bytes]]:
        """The transaction's changes against the read point, and the old images of
        the changed pages (kept for readers pinned at older read points)."""
        dirty = self._dirty
        page_count_before = self._page_count_committed
        page_count = self._page_count
        assert self.read_point is not None
        writes: list[PageWrite] = []
        old_images: dict[int, bytes] = {}
        for page in sorted(dirty):
            image = dirty[page]
            assert page < page_count, (page, page_count)
            if page >= page_count_before:
                writes.append(PageWrite(page, Kind.IMAGE, image, image))
                continue
            old = self._read_committed(page)
            ranges = diff(old, image)
            if not ranges:
                continue
            old_images[page] = old
            payload = delta_payload(ranges)
            if len(payload) > DELTA_BYTES_MAX:
                writes.append(PageWrite(page, Kind.IMAGE, image, image))
            else:
                writes.append(PageWrite(page, Kind.DELTA, payload, image))
        changes = CommitChanges(
            base=self.read_point,
            pages=tuple(writes),
            page_count=page_count if page_count != page_count_before else None,
            commit_time_us=time.time_ns() // 1000,
            pages_dirty=len(dirty),
        )
        return changes, old_images

    def discard_transaction(self) -> None:
        """Forgets the transaction's writes: it ended without a commit point.

        The connection's rollback hook calls this (the only signal in EXCLUSIVE
        locking mode); in NORMAL mode dropping the write lock does too. SQLite has
        by then written the original images back over any pages it spilled, so an
        empty dirty map is the same file it expects.
        """
        if self._dirty or self._page_count != self._page_count_committed:
            self.rollbacks += 1
        self._dirty = {}
        self._prepared = None
        self._page_count = self._page_count_committed

    # -- locks ------------------------------------------------------------------------

    def xLock(self, level: int) -> None:
        self._check_usable()
        if self._lock_level == LOCK_NONE and level >= LOCK_SHARED:
            self.snapshot_conflict = False
            state = self._state
            self.read_point, page_count = state.pin_durable() if self.durable_read else state.pin()
            self._pinned = True
            self.lsn_seen_max = max(self.lsn_seen_max, self.read_point)
            self._page_count_committed = self._page_count = page_count
        if self._lock_level < LOCK_RESERVED <= level:
            if not self.writable:
                raise apsw.ReadOnlyError("a reading connection cannot write")
            self._state.acquire_write(self)
            self._pinned = False
        self._lock_level = max(self._lock_level, level)

    def xUnlock(self, level: int) -> None:
        if self._lock_level >= LOCK_RESERVED > level:
            self.discard_transaction()
            self._state.release_write(self, keep_pin=level >= LOCK_SHARED)
            self._pinned = level >= LOCK_SHARED
        if level == LOCK_NONE and self.read_point is not None:
            if self._pinned:
                self._state.unpin(self.read_point)
                self._pinned = False
            self.read_point = None
        self._lock_level = min(self._lock_level, level)

    def xCheckReservedLock(self) -> bool:
        return self._state.writer_is_other_than(self)

    # -- the rest ---------------------------------------------------------------------

    def xSectorSize(self) -> int:
        return PAGE_SIZE_BYTES

    def xDeviceCharacteristics(self) -> int:
        # SQLite asks on every overflow page it reads (sqlite3PagerDirectReadOk): a
        # callback per 4 KiB of a large value, even cache-hot (about 0.6 us each).
        # No flag helps: SUBPAGE_READ would make SQLite read overflow pages around
        # its cache, and the atomic-write optimisations are not compiled in.
        return 0

    def xClose(self) -> None:
        self.xUnlock(LOCK_NONE)
        self._dirty = {}


class VolumeVFS(apsw.VFS):
    """An APSW VFS whose main database file is the volume behind `source`.

    Register one per volume; connections open it through compute_node.engine.
    connection.open_connection. `file_class` lets tests and benchmarks count
    callbacks (compute_node.engine.diagnostics).
    """

    def __init__(
        self,
        source: PageSource,
        *,
        name: str | None = None,
        versions_bytes_max: int = VERSIONS_BYTES_MAX_DEFAULT,
        file_class: type[VolumeFile] = VolumeFile,
    ) -> None:
        self.name = name or f"borealis-volume-{next(_vfs_serial)}"
        self.state = VolumeState(source, versions_bytes_max)
        self._file_class = file_class
        self._opened: dict[str, VolumeFile] = {}
        self._opened_lock = threading.Lock()
        # The base VFS ("" = the default) supplies randomness, time and sleep (for
        # the busy handler); every file operation is ours.
        super().__init__(self.name, base="")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> VolumeFile:
        open_flags = flags[0]
        if not open_flags & apsw.SQLITE_OPEN_MAIN_DB:
            kinds = [kind for kind, value in _OPEN_KINDS if open_flags & value]
            raise apsw.CantOpenError(
                f"the volume VFS opens only the main database, not {kinds or hex(open_flags)}: "
                "journal_mode=MEMORY and temp_store=MEMORY keep every other file in memory"
            )
        token = (
            name.uri_parameter(URI_CONNECTION_PARAMETER)
            if isinstance(name, apsw.URIFilename)
            else None
        )
        if token is None:
            # An ATTACHed database would be a second database on the same volume.
            raise apsw.CantOpenError(
                "the volume VFS opens only connections made by open_connection (no ATTACH)"
            )
        writable = not open_flags & apsw.SQLITE_OPEN_READONLY
        file = self._file_class(self.state, writable=writable)
        flags[1] = open_flags & (apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_READWRITE)
        with self._opened_lock:
            self._opened[token] = file
        return file

    def take_opened(self, token: str) -> VolumeFile:
        """The file xOpen created for the connection opened with this URI token."""
        with self._opened_lock:
            return self._opened.pop(token)

    def xAccess(self, pathname: str, flags: int) -> bool:
        # No journal, WAL or other file exists beside the volume.
        return False

    def xFullPathname(self, name: str) -> str:
        return name

    def xDelete(self, filename: str, syncdir: bool) -> None:
        raise apsw.exception_for(apsw.SQLITE_IOERR_DELETE_NOENT)


_OPEN_KINDS = (
    ("main journal", apsw.SQLITE_OPEN_MAIN_JOURNAL),
    ("temp database", apsw.SQLITE_OPEN_TEMP_DB),
    ("temp journal", apsw.SQLITE_OPEN_TEMP_JOURNAL),
    ("transient database", apsw.SQLITE_OPEN_TRANSIENT_DB),
    ("subjournal", apsw.SQLITE_OPEN_SUBJOURNAL),
    ("super journal", apsw.SQLITE_OPEN_SUPER_JOURNAL),
    ("WAL", apsw.SQLITE_OPEN_WAL),
)
