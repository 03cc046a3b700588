"""Garbage collection below the PGMRPL.

No read point below the PGMRPL will ever be asked for, so for each page only the
newest version at or below it (the horizon, capped by the SCL) is needed as a
base; everything older goes, index entry and log record. If that newest version
is a delta, it is first materialised so the base is a full image.

With continuous backup on, the horizon is also capped by what the backup holds
(the PG's progress marker, storage_node/backup.py): a record leaves storage only
once it is in the object store.

Peers that fall further behind than the horizon cannot be filled from this log by
gossip; a new segment that replaces one copies page images at the PGMRPL instead
(storage_node/hydration.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from borealis.ids import SegmentId
from borealis.log import get_logger
from borealis.metrics import Metrics
from storage_node.coalescer import write_image
from storage_node.segment import Segment
from storage_node.store import TAG_DELTA, PageVersions, SegmentStore
from storage_node.writer import Writer

log = get_logger("storage_node.garbage_collector")

DELETES_PER_TRANSACTION_MAX = 4096


def collectable(versions: PageVersions, horizon: int) -> tuple[int | None, list[int]]:
    """(lsn to materialise first or None, lsns to delete) for one page, versions newest first."""
    base = next((index for index, lsn in enumerate(versions.lsns) if lsn <= horizon), None)
    if base is None:
        return None, []
    older = versions.lsns[base + 1 :]
    materialise = versions.lsns[base] if versions.tags[base] == TAG_DELTA and older else None
    return materialise, older


class GarbageCollector:
    def __init__(
        self,
        store: SegmentStore,
        writer: Writer,
        metrics: Metrics,
        backed_up_lsn: Callable[[Segment], Awaitable[int]] | None = None,
    ) -> None:
        self._store = store
        self._writer = writer
        self._metrics = metrics
        # None: no backup, the horizon is min(PGMRPL, SCL).
        self._backed_up_lsn = backed_up_lsn
        self._horizon_done: dict[SegmentId, int] = {}

    async def run_once(self) -> str:
        deleted = 0
        for segment in list(self._store.segments.values()):
            deleted += await self._collect(segment)
        return f"deleted={deleted}" if deleted else ""

    async def _collect(self, segment: Segment) -> int:
        horizon = min(segment.pgmrpl, segment.scl)
        if horizon and self._backed_up_lsn is not None:
            horizon = min(horizon, await self._backed_up_lsn(segment))
        if horizon == 0 or self._horizon_done.get(segment.id) == horizon:
            return 0
        versions = await asyncio.to_thread(lambda: list(self._store.page_versions(segment)))
        doomed: list[tuple[int, int]] = []
        for page_versions in versions:
            materialise, older = collectable(page_versions, horizon)
            if not older:
                continue
            if materialise is not None and not await write_image(
                self._store, self._writer, segment, page_versions.page, materialise
            ):
                continue  # keep every version until the base can be materialised
            doomed.extend((page_versions.page, lsn) for lsn in older)
        deleted = 0
        for start in range(0, len(doomed), DELETES_PER_TRANSACTION_MAX):
            chunk = doomed[start : start + DELETES_PER_TRANSACTION_MAX]
            deleted += await self._writer.run(
                partial(self._store.op_delete_versions, segment=segment, versions=chunk)
            )
        self._horizon_done[segment.id] = horizon
        if deleted:
            self._metrics.inc("gc_records_deleted_total", deleted)
        return deleted
