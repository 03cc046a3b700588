"""The scrubber: re-checks every stored CRC and repairs bad copies from peers.

A pass walks each segment's log records and materialised images. A bad log record
is replaced by the peer's copy of the same LSN (checked again before it is
written); a bad materialised image by the peer's page at the same LSN. Until a
repair lands, reads that need the bad copy fail with DATA_LOSS rather than serve
it, and wake the scrubber.
"""

from __future__ import annotations

import asyncio
from functools import partial

from borealis import redo
from borealis.errors import InvalidRequest
from borealis.log import get_logger
from borealis.metrics import Metrics
from storage_node.config import StorageNodeConfig
from storage_node.peers import PEER_ERRORS, Peers
from storage_node.periodic import Periodic
from storage_node.segment import Segment
from storage_node.store import LOG_KEY, VERSION_KEY, SegmentStore
from storage_node.writer import Writer

log = get_logger("storage_node.scrubber")


class Scrubber:
    def __init__(
        self,
        config: StorageNodeConfig,
        store: SegmentStore,
        writer: Writer,
        peers: Peers,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._writer = writer
        self._peers = peers
        self._metrics = metrics
        self.periodic: Periodic | None = None

    def wake(self) -> None:
        if self.periodic is not None:
            self.periodic.wake()

    async def run_once(self) -> str:
        checked_bad = repaired = 0
        for segment in list(self._store.segments.values()):
            resume: bytes | None = b""
            while resume is not None:
                bad, resume = await asyncio.to_thread(
                    self._store.scan, segment, resume, self._config.scrub_items_per_pass_max
                )
                for kind, key in bad:
                    checked_bad += 1
                    self._metrics.inc("crc_failures_total")
                    if await self._repair(segment, kind, key):
                        repaired += 1
        if repaired:
            self._metrics.inc("scrub_repairs_total", repaired)
        return f"bad={checked_bad} repaired={repaired}" if checked_bad else ""

    async def _repair(self, segment: Segment, kind: str, key: bytes) -> bool:
        epochs = segment.epochs()
        for member, client in self._peers.of(segment):
            try:
                if kind == "log":
                    _, _, lsn = LOG_KEY.unpack(key)
                    records, _, _ = await client.read_records(segment.id, epochs, lsn - 1, lsn)
                    if not records or redo.check(records[0])[1] != lsn:
                        continue
                    await self._writer.run(
                        partial(self._store.op_replace_record, segment=segment, data=records[0])
                    )
                    log.warning(
                        "repaired a corrupt log record from a peer",
                        segment=segment.id,
                        lsn=lsn,
                        peer=member.node,
                    )
                else:
                    _, _, page, lsn = VERSION_KEY.unpack(key)
                    image, _ = await client.get_page(segment.id, epochs, page, lsn)
                    if len(image) != redo.PAGE_SIZE_BYTES:
                        continue
                    await self._writer.run(
                        partial(
                            self._store.op_put_image,
                            segment=segment,
                            page=page,
                            lsn=lsn,
                            image=image,
                        )
                    )
                    log.warning(
                        "repaired a corrupt page image from a peer",
                        segment=segment.id,
                        page=page,
                        lsn=lsn,
                        peer=member.node,
                    )
                return True
            except (InvalidRequest, *PEER_ERRORS) as error:
                log.info(
                    "repair from peer failed", segment=segment.id, peer=member.node, error=error
                )
        log.error("no peer could repair a corrupt copy", segment=segment.id, kind=kind)
        return False
