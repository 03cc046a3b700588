"""An in-memory volume that keeps every page version: a PageSource for unit tests,
benchmarks and single-process experiments, and an executable statement of the
contract the volume client implements.

It does the volume client's part of a commit without any network: allocates one
LSN per record in CommitChanges.records() order, fills the backlinks (SIZE records
go to PG 0 and link to the previous SIZE record, as compute_node/volume/lsn.py
does), encodes the records with borealis/redo.py, and keeps each commit group's
encoded records in `groups`.
"""

from __future__ import annotations

import bisect
import threading

from borealis import redo
from borealis.ids import LSN_NONE, Lsn
from borealis.redo import PAGE_SIZE_BYTES, ZERO_PAGE, Kind, RedoRecord
from compute_node.engine.source import CommitChanges

PAGES_PER_PG_DEFAULT = 65536
SIZE_PG = 0


class MemoryPageSource:
    page_size = PAGE_SIZE_BYTES

    def __init__(self, pages_per_pg: int = PAGES_PER_PG_DEFAULT) -> None:
        assert pages_per_pg > 0, pages_per_pg
        self.pages_per_pg = pages_per_pg
        self._lock = threading.Lock()
        # page -> ascending LSNs and the images at them (parallel lists, for bisect).
        self._lsns: dict[int, list[Lsn]] = {}
        self._images: dict[int, list[bytes]] = {}
        self._sizes: list[tuple[Lsn, int]] = [(LSN_NONE, 0)]
        self._lsn_last = LSN_NONE
        self._lsn_last_by_pg: dict[int, Lsn] = {}
        self._lsn_size_last = LSN_NONE
        self.groups: list[list[bytes]] = []
        self.changes: list[CommitChanges] = []
        self.reads = 0
        # Set to an exception to make the next admit or commit fail (error paths).
        self.fail_next_admit: BaseException | None = None
        self.fail_next_commit: BaseException | None = None
        self.admitted: CommitChanges | None = None

    # -- PageSource --------------------------------------------------------------------

    def lsn_newest(self) -> Lsn:
        with self._lock:
            return self._lsn_last

    def page_count(self) -> int:
        with self._lock:
            return self._sizes[-1][1]

    def read_page(self, page: int, read_point: Lsn) -> bytes:
        with self._lock:
            self.reads += 1
            lsns = self._lsns.get(page)
            if lsns is None:
                return ZERO_PAGE
            index = bisect.bisect_right(lsns, read_point) - 1
            return ZERO_PAGE if index < 0 else self._images[page][index]

    def admit(self, changes: CommitChanges) -> None:
        with self._lock:
            if self.fail_next_admit is not None:
                error, self.fail_next_admit = self.fail_next_admit, None
                raise error
            self.admitted = changes

    def commit(self, changes: CommitChanges) -> Lsn:
        with self._lock:
            assert self.admitted is not None, "commit() follows admit()"
            self.admitted = None
            if self.fail_next_commit is not None:
                error, self.fail_next_commit = self.fail_next_commit, None
                raise error
            assert changes.base == self._lsn_last, (changes.base, self._lsn_last)
            records = list(changes.records())
            assert records, "a commit group has at least one record"
            group = []
            lsn = self._lsn_last
            images = {write.page: write.image for write in changes.pages}
            for index, (page, kind, payload) in enumerate(records):
                lsn = Lsn(lsn + 1)
                cpl = index == len(records) - 1
                group.append(self._encode(lsn, page, kind, payload, cpl, changes.commit_time_us))
                if kind == Kind.SIZE:
                    self._sizes.append((lsn, page))
                else:
                    self._lsns.setdefault(page, []).append(lsn)
                    self._images.setdefault(page, []).append(images[page])
            self._lsn_last = lsn
            self.groups.append(group)
            self.changes.append(changes)
            return lsn

    # -- inspection --------------------------------------------------------------------

    def page_count_at(self, read_point: Lsn) -> int:
        with self._lock:
            index = bisect.bisect_right(self._sizes, (read_point, 2**64)) - 1
            return self._sizes[index][1]

    def _encode(
        self, lsn: Lsn, page: int, kind: Kind, payload: bytes, cpl: bool, commit_time_us: int
    ) -> bytes:
        pg = SIZE_PG if kind == Kind.SIZE else page // self.pages_per_pg
        if kind == Kind.SIZE:
            prev_lsn_page = self._lsn_size_last
            self._lsn_size_last = lsn
        else:
            lsns = self._lsns.get(page)
            prev_lsn_page = lsns[-1] if lsns else LSN_NONE
        record = RedoRecord(
            lsn=lsn,
            prev_lsn_volume=Lsn(lsn - 1),  # LSNs are consecutive here
            prev_lsn_pg=self._lsn_last_by_pg.get(pg, LSN_NONE),
            prev_lsn_page=prev_lsn_page,
            page=page,
            kind=kind,
            payload=payload,
            cpl=cpl,
            commit_time_us=commit_time_us if cpl else 0,
        )
        self._lsn_last_by_pg[pg] = lsn
        return redo.encode(record)
