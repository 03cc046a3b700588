"""LSN allocation for the writer: strictly increasing LSNs and the three backlinks.

Sans-IO. The writer allocates one LSN per redo record at the commit point of each
SQLite transaction (one MTR, a commit group); the group's last record is its CPL.
Each record names the previous record of the volume, of its PG and of its page:

- `prev_lsn_pg` must be exact. Storage segments build their chain and SCL from it
  (storage_node/chain.py): a wrong backlink is a hole that never fills, and the PG
  never becomes complete again. After a restart the allocator is therefore given
  the last LSN of every PG, read from the segments once recovery has truncated
  everything above VDL.
- `prev_lsn_volume` is the previous record of the volume. After a restart it is the
  highest of those per-PG LSNs (every record belongs to a PG).
- `prev_lsn_page` is a hint, LSN_NONE (0) when unknown: storage does not rely on it.
  It is unknown for a page's first write after a restart, and for a page whose entry
  fell out of the bounded map below (`page_backlinks_max`). Keeping it exact would
  mean reading every page's last LSN at open time, for no reader that needs it.

SIZE records (page count changes, redo.Kind.SIZE, `page` = the new page count) go to
PG 0 by convention; their `prev_lsn_page` is the previous SIZE record, so the size
history forms its own chain (again 0 when unknown).

The allocator must be driven by one thread, in commit order: the LSN order is the
order in which the engine's commits become durable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from borealis.ids import LSN_MAX, LSN_NONE, Lsn, PgIndex
from compute_node.volume.topology import Topology

SIZE_PG = PgIndex(0)
PAGE_BACKLINKS_MAX_DEFAULT = 1_000_000


@dataclass(frozen=True, slots=True)
class Assignment:
    """The LSN and backlinks of one record of a commit group.

    `page` is the page number, or for a SIZE record (`size` True) the new page count.
    """

    lsn: Lsn
    pg: PgIndex
    page: int
    prev_lsn_volume: Lsn
    prev_lsn_pg: Lsn
    prev_lsn_page: Lsn
    cpl: bool
    size: bool = False


class LsnAllocator:
    def __init__(
        self,
        start_after: Lsn = LSN_NONE,
        last_lsn_by_pg: Mapping[PgIndex, Lsn] | None = None,
        last_lsn_by_page: Mapping[int, Lsn] | None = None,
        last_lsn_size: Lsn = LSN_NONE,
        page_backlinks_max: int = PAGE_BACKLINKS_MAX_DEFAULT,
    ) -> None:
        """`start_after`: the first LSN allocated is start_after + 1. After recovery it
        is the end of the truncation range, above every LSN an old writer may have used.

        `last_lsn_by_pg`: the last surviving record of each PG (PGs not named have
        none). `last_lsn_by_page` and `last_lsn_size` are optional hints (see the
        module docstring); a new volume passes nothing.
        """
        assert page_backlinks_max > 0, page_backlinks_max
        self._last_lsn_by_pg: dict[PgIndex, Lsn] = dict(last_lsn_by_pg or {})
        # Ordered by last write: the first key is the page written least recently,
        # the one to forget when the map is full (OrderedDict pops its front in O(1)).
        self._last_lsn_by_page: OrderedDict[int, Lsn] = OrderedDict(last_lsn_by_page or {})
        self._page_backlinks_max = page_backlinks_max
        self.lsn_allocated = start_after
        self.lsn_record_last = max(self._last_lsn_by_pg.values(), default=LSN_NONE)
        self.lsn_size_last = last_lsn_size
        # Backlinks point below the new records; a start inside the known history
        # would allocate LSNs the segments already hold.
        assert self.lsn_record_last <= start_after, (self.lsn_record_last, start_after)
        assert all(lsn <= start_after for lsn in self._last_lsn_by_page.values())
        assert last_lsn_size <= start_after
        self._forget_old_pages()

    def assign(
        self, pages: Sequence[int], topology: Topology, page_count: int | None = None
    ) -> list[Assignment]:
        """LSNs and backlinks for one commit group: one record per entry of `pages`, in
        that order, then a SIZE record if `page_count` (the new page count) is given.

        The last record of the group is its CPL. A page may appear more than once
        (its later record links to the earlier one).
        """
        count = len(pages) + (page_count is not None)
        assert count > 0, "a commit group has at least one record"
        assert self.lsn_allocated + count <= LSN_MAX, "LSN space exhausted"
        assignments: list[Assignment] = []
        lsn = self.lsn_allocated
        prev_lsn_volume = self.lsn_record_last
        last_lsn_by_pg = self._last_lsn_by_pg
        last_lsn_by_page = self._last_lsn_by_page
        pages_per_pg = topology.pages_per_pg
        # The group's last record is its consistency point (CPL).
        cpl_index = len(pages) - 1 if page_count is None else -1
        for index, page in enumerate(pages):
            assert page >= 0, page
            lsn = Lsn(lsn + 1)
            pg = PgIndex(page // pages_per_pg)
            prev_lsn_page = last_lsn_by_page.get(page, LSN_NONE)
            last_lsn_by_page[page] = lsn
            last_lsn_by_page.move_to_end(page)
            assignments.append(
                Assignment(
                    lsn=lsn,
                    pg=pg,
                    page=page,
                    prev_lsn_volume=prev_lsn_volume,
                    prev_lsn_pg=last_lsn_by_pg.get(pg, LSN_NONE),
                    prev_lsn_page=prev_lsn_page,
                    cpl=index == cpl_index,
                )
            )
            last_lsn_by_pg[pg] = lsn
            prev_lsn_volume = lsn
        if page_count is not None:
            assert page_count >= 0, page_count
            lsn = Lsn(lsn + 1)
            assignments.append(
                Assignment(
                    lsn=lsn,
                    pg=SIZE_PG,
                    page=page_count,
                    prev_lsn_volume=prev_lsn_volume,
                    prev_lsn_pg=last_lsn_by_pg.get(SIZE_PG, LSN_NONE),
                    prev_lsn_page=self.lsn_size_last,
                    cpl=True,
                    size=True,
                )
            )
            last_lsn_by_pg[SIZE_PG] = lsn
            self.lsn_size_last = lsn
        self.lsn_allocated = lsn
        self.lsn_record_last = lsn
        self._forget_old_pages()
        return assignments

    def lsn_last_of(self, pg: PgIndex) -> Lsn:
        """The last record allocated in `pg` (LSN_NONE if none since the start)."""
        return self._last_lsn_by_pg.get(pg, LSN_NONE)

    def lsn_last_by_pg(self) -> dict[PgIndex, Lsn]:
        return dict(self._last_lsn_by_pg)

    def _forget_old_pages(self) -> None:
        while len(self._last_lsn_by_page) > self._page_backlinks_max:
            self._last_lsn_by_page.popitem(last=False)
