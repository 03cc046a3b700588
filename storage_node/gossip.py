"""Gossip: a segment that is behind its peers, or has a proven hole, copies the missing
records from the peer with the highest SCL.

A segment learns it is behind in two ways: a pending record above its SCL proves a
hole (storage_node/chain.py), and a peer's SCL above its own shows records it never
received (it was down during the appends). Each pass asks every peer's state, then
reads records above its own SCL from the most complete peer with the same epochs,
through the same checks and writer path as AppendRedo.
"""

from __future__ import annotations

from borealis.errors import BorealisError, StaleEpoch
from borealis.ids import SegmentId
from borealis.log import get_logger
from borealis.metrics import Metrics
from borealis.redo import HEADER
from storage_node.config import StorageNodeConfig
from storage_node.peers import PEER_ERRORS, Peers
from storage_node.segment import Segment, SegmentMeta
from storage_node.service import StorageService
from storage_node.store import SegmentStore

log = get_logger("storage_node.gossip")

# A pass copies at most this much per segment, so one far-behind segment cannot
# starve the others; the next pass continues.
FILL_BYTES_PER_PASS_MAX = 64 * 2**20


class Gossip:
    def __init__(
        self,
        config: StorageNodeConfig,
        store: SegmentStore,
        service: StorageService,
        peers: Peers,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._service = service
        self._peers = peers
        self._metrics = metrics
        # Each peer segment's highest LSN as the previous pass saw it.
        self._seen: dict[tuple[SegmentId, str], int] = {}

    async def run_once(self) -> str:
        """The periodic pass: fills what peers held a pass ago and this segment lacks."""
        return await self._run(eager=False)

    async def run_eager(self) -> str:
        """An operator's pass (admin RunTask): fills everything peers hold now."""
        return await self._run(eager=True)

    async def _run(self, eager: bool) -> str:
        filled = 0
        for segment in list(self._store.segments.values()):
            # A hydrating segment has no chain to extend yet (storage_node/hydration.py).
            if not segment.meta.hydrating:
                filled += await self._fill(segment, eager)
        return f"filled={filled}" if filled else ""

    async def fill_now(self, segment: Segment) -> int:
        """Fills the segment with everything its peers hold now (after a hydration)."""
        return await self._fill(segment, eager=True)

    async def _fill(self, segment: Segment, eager: bool) -> int:
        epochs = segment.epochs()
        candidates = []
        for client, state in await self._peers.states(segment):
            if (state.volume_epoch, state.membership_epoch) != (epochs.volume, epochs.membership):
                continue
            # Records a peer held a whole pass ago and this segment still lacks were
            # missed, not in flight: the writer delivers in much less than an
            # interval. Filling up to what the peer holds right now would copy,
            # under a steady write stream, records that are about to arrive anyway.
            seen = (segment.id, client.address)
            target = state.highest_lsn if eager else self._seen.get(seen, 0)
            self._seen[seen] = state.highest_lsn
            if target > segment.scl:
                candidates.append((client, state, target))
        if not candidates:
            return 0
        # The most complete peer first; others if it fails midway.
        candidates.sort(key=lambda item: (item[1].scl, item[1].highest_lsn), reverse=True)
        filled = 0
        copied_bytes = 0
        for client, state, target in candidates:
            after = segment.scl
            while copied_bytes < FILL_BYTES_PER_PASS_MAX:
                try:
                    records, more, _ = await client.read_records(
                        segment.id,
                        epochs,
                        after,
                        target,
                        # What is read goes through the AppendRedo checks, batch limits included.
                        min(
                            self._config.read_records_bytes_max,
                            self._config.append_batch_bytes_max,
                        ),
                    )
                except PEER_ERRORS as error:
                    log.info(
                        "gossip read failed", segment=segment.id, peer=client.address, error=error
                    )
                    break
                if not records:
                    break
                if after == segment.scl and collected_since(records[0], segment.scl, state):
                    await self._hydrate_again(segment, client.address)
                    return filled
                # A read page may hold more records than one append batch may (small
                # records): append it in batches the node's own checks accept.
                batch_records_max = self._config.append_batch_records_max
                for start in range(0, len(records), batch_records_max):
                    batch = records[start : start + batch_records_max]
                    try:
                        _, _, new = await self._service.append(segment, batch, epochs)
                    except StaleEpoch:
                        # Recovery changed the segment's epochs during the fill: what was
                        # read under the old ones may be truncated records.
                        log.info("gossip fill stopped by an epoch change", segment=segment.id)
                        self._metrics.inc("gossip_records_filled_total", filled)
                        return filled
                    except BorealisError as error:
                        # This node's own write failed (a full queue, an injected
                        # fault): the next pass tries again.
                        log.warning("gossip fill failed", segment=segment.id, error=error)
                        self._metrics.inc("gossip_records_filled_total", filled)
                        return filled
                    filled += new
                copied_bytes += sum(len(r) for r in records)
                after = HEADER.unpack_from(records[-1])[1]
                if not more:
                    break
            if segment.scl >= target:
                break
        if filled:
            self._metrics.inc("gossip_records_filled_total", filled)
            log.info("gossip filled records", segment=segment.id, records=filled, scl=segment.scl)
        return filled

    async def _hydrate_again(self, segment: Segment, peer: str) -> None:
        """The segment was away so long that its most complete peer garbage-collected
        records it lacks: gossip can never complete its chain. It drops what it holds
        and hydrates from its peers' page images, as a replacement segment does."""
        log.warning(
            "segment behind its peers' garbage collection: hydrating it again",
            segment=segment.id,
            scl=segment.scl,
            peer=peer,
        )
        await self._service.hydrate_again(segment)
        self._metrics.inc("gossip_rehydrations_total")


def collected_since(first: bytes, scl: int, peer: SegmentMeta) -> bool:
    """Whether a peer's first record above `scl` shows the records in between gone
    from that peer: it does not link to `scl`, and `scl` is below the peer's PGMRPL
    (below which storage garbage-collects). Above the PGMRPL a gap is only records
    still on their way, which the writer or a later pass delivers."""
    return HEADER.unpack_from(first)[3] > scl and scl < peer.pgmrpl
