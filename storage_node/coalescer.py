"""The coalescer: writes a new page image when a page's delta chain gets long.

GetPage walks from the read point back to the newest image, so its cost grows
with the number of deltas in between. For every page that got deltas since the
last pass, the coalescer counts the deltas above the newest image (at or below
the SCL, where the chain is known complete) and, past `coalesce_deltas_max`,
materialises the page at its newest version and stores that image in place of
the version's delta marker. Older versions stay for older read points until GC.
"""

from __future__ import annotations

import asyncio
from functools import partial

from borealis.errors import Corruption
from borealis.ids import SegmentId
from borealis.log import get_logger
from borealis.metrics import Metrics
from storage_node.config import StorageNodeConfig
from storage_node.segment import Segment
from storage_node.store import TAG_DELTA, PageVersions, SegmentStore
from storage_node.writer import Writer

log = get_logger("storage_node.coalescer")


def deltas_to_coalesce(versions: PageVersions, scl: int) -> tuple[int, int] | None:
    """(lsn to materialise at, deltas above the newest image) if the chain is too long, from
    versions newest first; None when the newest version at or below the SCL is an image."""
    newest = next((index for index, lsn in enumerate(versions.lsns) if lsn <= scl), None)
    if newest is None:
        return None
    deltas = 0
    for tag in versions.tags[newest:]:
        if tag != TAG_DELTA:
            break
        deltas += 1
    if deltas == 0:
        return None
    return versions.lsns[newest], deltas


async def write_image(
    store: SegmentStore, writer: Writer, segment: Segment, page: int, lsn: int
) -> bool:
    """Materialises `page` at its version `lsn` and stores the image as that version.

    False (with a warning) when a needed version is corrupt: the page keeps its
    deltas until the scrubber has repaired them.
    """
    try:
        image, _ = await asyncio.to_thread(store.read_page, segment, page, lsn)
    except Corruption as error:
        log.warning(
            "page not materialised: a version is corrupt",
            segment=segment.id,
            page=page,
            lsn=lsn,
            error=error,
        )
        return False
    await writer.run(partial(store.op_put_image, segment=segment, page=page, lsn=lsn, image=image))
    return True


class Coalescer:
    def __init__(
        self, config: StorageNodeConfig, store: SegmentStore, writer: Writer, metrics: Metrics
    ) -> None:
        self._config = config
        self._store = store
        self._writer = writer
        self._metrics = metrics
        self._looked_at_all: set[SegmentId] = set()

    async def run_once(self) -> str:
        images = 0
        for segment in list(self._store.segments.values()):
            images += await self._coalesce(segment)
        return f"images={images}" if images else ""

    async def _coalesce(self, segment: Segment) -> int:
        pages: set[int] | None = segment.take_touched()
        if segment.id not in self._looked_at_all:
            # Which pages got deltas is kept in memory only: after a start, the
            # first pass looks at every page of the segment once.
            self._looked_at_all.add(segment.id)
            pages = None
        elif not pages:
            return 0
        scl = segment.scl
        versions = await asyncio.to_thread(lambda: list(self._store.page_versions(segment, pages)))
        images = 0
        later = set()
        for page_versions in versions:
            if page_versions.lsns[0] > scl:
                later.add(page_versions.page)  # versions above the SCL: look again later
            found = deltas_to_coalesce(page_versions, scl)
            if found is None or found[1] < self._config.coalesce_deltas_max:
                continue
            if await write_image(self._store, self._writer, segment, page_versions.page, found[0]):
                images += 1
        segment.touch(later)
        if images:
            self._metrics.inc("coalesced_images_total", images)
        return images
