"""Hydration: a segment created to replace another (SetMembership with hydrate=true)
copies its PG's state from a peer before it serves reads.

The base is the source peer's PGMRPL: no instance reads below it, and at it the
peer can still answer every page (GC keeps the newest version at or below the
PGMRPL). A pass copies, from the most complete peer at the same epochs:

1. every page image as of the base (ReadPageImages), stored as materialised
   versions at their page LSNs;
2. every record the peer holds at or below the base (ReadRecords), with their page
   versions, so recovery's record reads (SIZE records, the PG's last record) and
   reads of this segment's log answer as the peer's do;

then, in one transaction, starts the segment's chain at the PG's newest record at
or below the base (records the writer sent meanwhile, above the base, join it),
raises its PGMRPL to the base and clears `hydrating`. (The writer sends each PG its
newest record at or below the volume's PGMRPL, so the base is usually a record.) Gossip then copies the records above the base through the
AppendRedo path, at once. Until then the segment's SCL is 0 and reads are refused,
so a partial copy is never served; a pass that fails midway leaves what it copied
(real versions of real pages, below any truncation range) and the next pass
starts over, from whichever peer is best then.

Taking the peer's SCL as the base would copy fewer records, but this segment would
then refuse read points between the PGMRPL and that SCL, which readers still use.
"""

from __future__ import annotations

import time
from functools import partial

from borealis import faults, redo
from borealis.errors import Corruption, Unavailable
from borealis.ids import Epochs, Lsn
from borealis.log import get_logger
from borealis.metrics import Metrics
from storage_node.client import StorageClient
from storage_node.config import StorageNodeConfig
from storage_node.gossip import Gossip
from storage_node.peers import PEER_ERRORS, Peers
from storage_node.segment import Segment, SegmentMeta
from storage_node.store import IncomingRecord, SegmentStore
from storage_node.writer import Writer

log = get_logger("storage_node.hydration")

# Peers that must answer, all with nothing complete, before an empty PG's new segment
# is taken as hydrated: a read quorum of six, so at least one of them holds every
# record a write quorum acknowledged.
EMPTY_PEERS_MIN = 3
# Bounds on the calls of one hydration, so a peer that always says `more` cannot
# keep a pass going forever (a PG of 65536 pages needs 64 calls of 4 MiB).
IMAGE_CALLS_MAX = 100_000
RECORD_CALLS_MAX = 100_000


def pick_source(
    states: list[tuple[StorageClient, SegmentMeta]], epochs: Epochs
) -> tuple[StorageClient | None, int] | None:
    """(peer to copy from, base), (None, 0) when the PG is empty, or None to wait.

    A source must be at the segment's epochs, not hydrating itself, complete to some
    record and to its own PGMRPL (else it could not answer reads at it).
    """
    usable = [
        (client, state)
        for client, state in states
        if (state.volume_epoch, state.membership_epoch) == (epochs.volume, epochs.membership)
        and not state.hydrating
    ]
    sources = [
        (client, state) for client, state in usable if state.scl > 0 and state.scl >= state.pgmrpl
    ]
    if sources:
        client, state = max(sources, key=lambda item: (item[1].scl, item[1].pgmrpl))
        return client, state.pgmrpl
    if len(usable) >= EMPTY_PEERS_MIN and all(state.scl == 0 for _client, state in usable):
        # No peer has a complete record, so none has garbage-collected anything: the
        # records can all come through gossip from the start.
        return None, 0
    return None


class Hydrator:
    def __init__(
        self,
        config: StorageNodeConfig,
        store: SegmentStore,
        writer: Writer,
        peers: Peers,
        gossip: Gossip,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._writer = writer
        self._peers = peers
        self._gossip = gossip
        self._metrics = metrics

    async def run_once(self) -> str:
        """Hydrates every hydrating segment of this node, one at a time."""
        done = 0
        for segment in list(self._store.segments.values()):
            if segment.meta.hydrating and await self._hydrate(segment):
                done += 1
        return f"hydrated={done}" if done else ""

    async def _hydrate(self, segment: Segment) -> bool:
        epochs = segment.epochs()
        source = pick_source(await self._peers.states(segment), epochs)
        if source is None:
            return False
        client, base = source
        started_s = time.monotonic()
        pages = 0
        try:
            if client is not None and base > 0:
                pages = await self._copy_images(segment, epochs, client, base)
                await faults.apoint("storage.hydration.after_images")
                await self._copy_records(segment, epochs, client, base)
            await faults.apoint("storage.hydration.before_finish")
            scl = await self._writer.run(
                partial(self._store.op_finish_hydration, segment=segment, base=base, epochs=epochs)
            )
        except PEER_ERRORS as error:
            log.info(
                "hydration failed; the next pass starts over",
                segment=segment.id,
                peer=client.address if client is not None else "",
                error=repr(error),
            )
            return False
        self._metrics.inc("hydrations_total")
        log.info(
            "segment hydrated",
            segment=segment.id,
            base=base,
            pages=pages,
            scl=scl,
            peer=client.address if client is not None else "",
            seconds=round(time.monotonic() - started_s, 3),
        )
        await self._gossip.fill_now(segment)
        return True

    async def _copy_images(
        self, segment: Segment, epochs: Epochs, client: StorageClient, base: int
    ) -> int:
        """Copies every page image as of `base`; the number of pages."""
        start_page = segment.meta.first_page
        pages = 0
        for _ in range(IMAGE_CALLS_MAX):
            images, more, next_page = await client.read_page_images(
                segment.id, epochs, base, start_page, self._config.read_records_bytes_max
            )
            check_images(segment, images, base, start_page)
            if images:
                await self._writer.run(
                    partial(
                        self._store.op_put_hydrated_images,
                        segment=segment,
                        images=images,
                        epochs=epochs,
                    )
                )
                pages += len(images)
                self._metrics.inc("hydration_pages_total", len(images))
            if not more:
                return pages
            if next_page <= start_page:
                raise Corruption("ReadPageImages did not advance", page=start_page)
            start_page = next_page
        raise Unavailable("ReadPageImages kept saying `more`", segment=segment.id)

    async def _copy_records(
        self, segment: Segment, epochs: Epochs, client: StorageClient, base: int
    ) -> None:
        """Copies every record the peer holds at or below `base`."""
        after = 0
        for _ in range(RECORD_CALLS_MAX):
            records, more, _ = await client.read_records(
                segment.id, epochs, after, base, self._config.read_records_bytes_max
            )
            checked = check_records(segment, records, after, base)
            if checked:
                await self._writer.run(
                    partial(
                        self._store.op_put_hydrated_records,
                        segment=segment,
                        records=checked,
                        epochs=epochs,
                    )
                )
                after = checked[-1][0]
            if not more or not records:
                return
        raise Unavailable("ReadRecords kept saying `more`", segment=segment.id)


def check_images(
    segment: Segment, images: list[tuple[int, Lsn, bytes]], base: int, start_page: int
) -> None:
    """A peer's images must be whole pages of this segment, ascending, at or below `base`
    (Corruption otherwise: the pass stops and the next one starts over)."""
    previous_page = start_page - 1
    for page, page_lsn, image in images:
        if (
            len(image) != redo.PAGE_SIZE_BYTES
            or not segment.contains_page(page)
            or page <= previous_page
            or not 0 < page_lsn <= base
        ):
            raise Corruption("peer sent an unusable page image", page=page, lsn=page_lsn)
        previous_page = page


def check_records(
    segment: Segment, records: list[bytes], after: int, base: int
) -> list[IncomingRecord]:
    """Checks a peer's records (CRC, LSN order within (after, base], page range)."""
    checked: list[IncomingRecord] = []
    last_lsn = after
    for data in records:
        _, lsn, _, prev_lsn_pg, _, page, kind, _, _, _ = redo.check(data, Corruption)
        if not last_lsn < lsn <= base or (
            kind != redo.KIND_SIZE and not segment.contains_page(page)
        ):
            raise Corruption("peer sent a record out of order or range", lsn=lsn)
        last_lsn = lsn
        checked.append((lsn, prev_lsn_pg, page, kind, data))
    return checked
