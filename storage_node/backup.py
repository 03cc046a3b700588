"""Continuous backup: each PG's log and page images, streamed to the object store.

Runs in every storage node (a Periodic task, `backup_interval_ms`). Per segment:

- **Who uploads.** Exactly one healthy segment per PG: the first of its members
  by node name whose node answers ListSegments and whose segment is not
  hydrating and is at the same epochs. So when that node dies, the next one
  takes over at its next pass; two uploaders at once (a slow answer) only write
  the same keys twice (keys are deterministic by LSN range, see
  borealis/backup_format.py).
- **What.** Records up to min(SCL, PGMRPL), in LSN order, cut into chunks of at
  most `backup_chunk_bytes_max` (so about one chunk per PG per pass under load),
  each followed by its index object; then the PG's progress marker. The PGMRPL
  bound keeps truncatable records out: everything at or below it was at or
  below a VDL. Every `backup_image_interval_s`, a page image set as of the
  progress point, which lets restore start there and lets retention drop the
  log below it.
- **Sealed** with the node's sealer for the volume (Store.sealer_of), associated
  data binding volume, PG and the object's LSN range.
- **Retention.** Objects a restore within the last `backup_retention_days` does
  not need are deleted (backup_format.retention_keep / retention_doomed), except
  what a snapshot or clone pins (borealis/backup_pins.keep_pinned).

Storage GC asks `backed_up_lsn` and never deletes a record the backup does not
hold yet (storage_node/garbage_collector.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from borealis import backup_format as layout
from borealis import backup_pins, redo
from borealis.encryption import Sealer
from borealis.errors import BorealisError, NotFound
from borealis.ids import SegmentId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.object_store import ObjectStore, object_store_from_url
from storage_node.config import StorageNodeConfig
from storage_node.peers import PEER_ERRORS, Peers
from storage_node.segment import Segment, SegmentMeta
from storage_node.store import SegmentStore

log = get_logger("storage_node.backup")

# A pass uploads at most this much per segment, so one far-behind PG does not
# starve the others; the next pass continues.
UPLOAD_BYTES_PER_PASS_MAX = 64 * 2**20
# Deadline of the ListSegments call that tells whether a peer is alive.
ELECTION_TIMEOUT_S_MAX = 1.0
# The progress marker GC reads is cached this long (one read per GC pass at most).
PROGRESS_CACHE_S = 1.0
RETENTION_INTERVAL_S = 60.0
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S


def declare_metrics(metrics: Metrics) -> None:
    for name, kind, help_text in (
        ("backup_chunks_uploaded_total", "counter", "Log chunks uploaded to the object store."),
        ("backup_bytes_uploaded_total", "counter", "Bytes of log chunks and images uploaded."),
        ("backup_image_sets_total", "counter", "Page image sets uploaded."),
        ("backup_objects_deleted_total", "counter", "Objects deleted past the retention."),
        ("backup_failures_total", "counter", "Backup passes of a segment that failed."),
        ("backup_uploader", "gauge", "1 for each PG this node uploads."),
        ("backup_progress_lsn", "gauge", "Every record of the PG up to it is backed up."),
    ):
        metrics.declare(name, kind, help_text)
        if kind == "counter":
            metrics.inc(name, 0)


@dataclass
class _PgState:
    progress_lsn: int
    image_set_created_s: float
    # The base of the last image set this node uploaded (an idle PG needs no new one).
    image_set_base_lsn: int = 0


class Backup:
    def __init__(
        self,
        config: StorageNodeConfig,
        store: SegmentStore,
        peers: Peers,
        metrics: Metrics,
        object_store: ObjectStore | None = None,
    ) -> None:
        assert config.backup_store_url, "backup needs backup_store_url"
        self._config = config
        self._store = store
        self._peers = peers
        self._metrics = metrics
        self._objects = object_store or object_store_from_url(
            config.backup_store_url, config.backup_endpoint_url or None
        )
        # PGs this node uploads, with what it has uploaded (None: not the uploader).
        self._uploading: dict[SegmentId, _PgState] = {}
        self._manifests_written: set[str] = set()
        self._progress_cache: dict[SegmentId, tuple[float, int]] = {}
        self._retention_checked_s = 0.0
        # Retention can only free something once a new image set exists.
        image_interval_s = config.backup_image_interval_s or RETENTION_INTERVAL_S
        self._retention_interval_s = min(RETENTION_INTERVAL_S, image_interval_s)
        declare_metrics(metrics)
        metrics.collector(self._samples)

    def _samples(self) -> list[Sample]:
        samples: list[Sample] = []
        for segment_id, state in list(self._uploading.items()):
            labels = {"volume": segment_id.volume_id, "pg": segment_id.pg}
            samples.append(("backup_uploader", labels, 1))
            samples.append(("backup_progress_lsn", labels, state.progress_lsn))
        return samples

    def _name(self, volume_id: int) -> str:
        return layout.volume_name(self._config.backup_cluster_id, volume_id)

    # -- the pass ------------------------------------------------------------------------------

    async def run_once(self) -> str:
        segments = [s for s in self._store.segments.values() if not s.meta.hydrating]
        mine = await self._elect(segments)
        uploading = {segment.id for segment in mine}
        for segment_id in list(self._uploading):
            if segment_id not in uploading:
                # Another node uploads it now; if this one is elected again, it
                # continues from the marker, not from what it knew.
                del self._uploading[segment_id]
        uploaded = 0
        for segment in mine:
            try:
                uploaded += await self._upload(segment)
            except BorealisError as error:
                # An unreachable store or a failed read: the next pass starts again
                # from the progress this node knows.
                self._metrics.inc("backup_failures_total")
                log.warning("backup pass failed", segment=segment.id, error=error)
        if time.monotonic() - self._retention_checked_s >= self._retention_interval_s:
            self._retention_checked_s = time.monotonic()
            await self._retention(mine)
        return f"records={uploaded}" if uploaded else ""

    async def _elect(self, segments: list[Segment]) -> list[Segment]:
        """The segments this node uploads: those where no member named before it is
        alive with a usable copy."""
        before: dict[SegmentId, list[str]] = {}
        addresses: dict[str, str] = {}
        for segment in segments:
            members = sorted(segment.meta.members, key=lambda member: member.node)
            names = [member.node for member in members]
            if self._config.name not in names:
                continue  # being replaced away: the new set uploads
            earlier = members[: names.index(self._config.name)]
            before[segment.id] = [member.node for member in earlier]
            addresses.update((member.node, member.address) for member in earlier)
        listings = await self._listings(addresses)
        mine = []
        for segment in segments:
            if segment.id not in before:
                continue
            if not any(self._usable(listings.get(node), segment) for node in before[segment.id]):
                mine.append(segment)
        return mine

    async def _listings(self, addresses: dict[str, str]) -> dict[str, list[SegmentMeta]]:
        timeout_s = min(ELECTION_TIMEOUT_S_MAX, self._config.peer_rpc_timeout_ms / 1000)
        nodes = list(addresses)
        answers = await asyncio.gather(
            *(
                self._peers.client(addresses[node]).list_segments(timeout_s=timeout_s)
                for node in nodes
            ),
            return_exceptions=True,
        )
        listings = {}
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, PEER_ERRORS):
                continue
            if isinstance(answer, BaseException):
                raise answer
            listings[node] = answer
        return listings

    @staticmethod
    def _usable(listing: list[SegmentMeta] | None, segment: Segment) -> bool:
        if listing is None:
            return False
        for meta in listing:
            if (meta.volume_id, meta.pg) == (segment.id.volume_id, segment.id.pg):
                return (
                    not meta.hydrating
                    and meta.volume_epoch == segment.meta.volume_epoch
                    and meta.membership_epoch == segment.meta.membership_epoch
                )
        return False

    # -- uploading -----------------------------------------------------------------------------

    async def _upload(self, segment: Segment) -> int:
        name = self._name(segment.id.volume_id)
        await self._ensure_manifest(segment, name)
        state = self._uploading.get(segment.id)
        if state is None:
            state = await self._take_over(segment, name)
            if state is None:
                return 0
            self._uploading[segment.id] = state
        bound = min(segment.scl, segment.pgmrpl)
        uploaded = 0
        if bound > state.progress_lsn:
            uploaded = await self._upload_records(segment, name, state, bound)
            await self._put_progress(segment, name, state.progress_lsn)
        interval_s = self._config.backup_image_interval_s
        if (
            interval_s > 0
            and state.progress_lsn > state.image_set_base_lsn
            and time.monotonic() - state.image_set_created_s >= interval_s
        ):
            await self._upload_image_set(segment, name, state.progress_lsn)
            state.image_set_created_s = time.monotonic()
            state.image_set_base_lsn = state.progress_lsn
        return uploaded

    async def _take_over(self, segment: Segment, name: str) -> _PgState | None:
        """This node has just become the PG's uploader: continue from the marker, or
        start the PG's backup (from its first record, or from an image set when this
        segment no longer holds the start)."""
        progress = await self._get_progress(segment.id, name)
        now_s = time.monotonic()
        if progress is not None:
            log.info("backup uploader of PG", segment=segment.id, progress=progress)
            return _PgState(progress, now_s)
        first = await asyncio.to_thread(self._store.read_records, segment, 0, segment.scl, 1)
        if not first[0] or redo.HEADER.unpack_from(first[0][0])[3] == 0:
            log.info("backup of PG starts at its first record", segment=segment.id)
            return _PgState(0, now_s)
        base = min(segment.scl, segment.pgmrpl)
        if base == 0:
            return None  # nothing readable yet: wait for a PGMRPL
        await self._upload_image_set(segment, name, base)
        await self._put_progress(segment, name, base)
        log.info("backup of PG starts at an image set", segment=segment.id, base=base)
        return _PgState(base, now_s, base)

    async def _upload_records(
        self, segment: Segment, name: str, state: _PgState, bound: int
    ) -> int:
        sealer = self._sealer(segment)
        uploaded = 0
        uploaded_bytes = 0
        while state.progress_lsn < bound and uploaded_bytes < UPLOAD_BYTES_PER_PASS_MAX:
            records, _more = await asyncio.to_thread(
                self._store.read_records,
                segment,
                state.progress_lsn,
                bound,
                self._config.backup_chunk_bytes_max,
            )
            if not records:
                # Everything up to the bound is uploaded (the bound is a record of
                # this PG, so this is only reached when the read found nothing new).
                state.progress_lsn = bound
                break
            if layout.index_entry(records[0]).prev_lsn_pg > state.progress_lsn:
                # This segment lacks records after the progress point (it hydrated
                # past them while another node uploaded): an image set bridges it.
                log.warning(
                    "backup gap bridged by an image set",
                    segment=segment.id,
                    progress=state.progress_lsn,
                    base=bound,
                )
                await self._upload_image_set(segment, name, bound)
                state.progress_lsn = bound
                break
            await self._put_chunk(segment, name, sealer, records)
            last = layout.index_entry(records[-1]).lsn
            assert last > state.progress_lsn, (last, state.progress_lsn)
            state.progress_lsn = last
            uploaded += len(records)
            uploaded_bytes += sum(map(len, records))
        return uploaded

    async def _put_chunk(
        self, segment: Segment, name: str, sealer: Sealer, records: list[bytes]
    ) -> None:
        volume, pg = segment.id.volume_id, segment.id.pg
        first, last = layout.index_entry(records[0]).lsn, layout.index_entry(records[-1]).lsn
        chunk = layout.encode_chunk(sealer, volume, pg, records)
        index = layout.encode_index(volume, pg, records)
        # The chunk first: an index object names a chunk that exists.
        await asyncio.to_thread(self._objects.put, layout.chunk_key(name, pg, first, last), chunk)
        await asyncio.to_thread(self._objects.put, layout.index_key(name, pg, first, last), index)
        self._metrics.inc("backup_chunks_uploaded_total")
        self._metrics.inc("backup_bytes_uploaded_total", len(chunk))

    async def _upload_image_set(self, segment: Segment, name: str, base: int) -> None:
        """Every page of the segment as of `base`, plus the records at or below it
        that a restored segment needs (the chain's anchor at `base` and every SIZE
        record), then done.json."""
        volume, pg = segment.id.volume_id, segment.id.pg
        sealer = self._sealer(segment)
        part = 0
        pages = 0
        start_page = segment.meta.first_page
        while True:
            images, more, start_page = await asyncio.to_thread(
                self._store.page_images,
                segment,
                base,
                start_page,
                self._config.backup_chunk_bytes_max,
            )
            if images:
                data = layout.encode_images(sealer, volume, pg, base, part, images)
                key = layout.image_part_key(name, pg, base, part)
                await asyncio.to_thread(self._objects.put, key, data)
                self._metrics.inc("backup_bytes_uploaded_total", len(data))
                part += 1
                pages += len(images)
            if not more:
                break
        anchor = await asyncio.to_thread(self._base_records, segment, base)
        if anchor:
            data = layout.encode_chunk(sealer, volume, pg, anchor, layout.KIND_BASE_RECORDS)
            await asyncio.to_thread(
                self._objects.put, layout.base_records_key(name, pg, base), data
            )
        done = layout.ImageSet(base, part, pages, int(time.time() * US_PER_S), bool(anchor))
        await asyncio.to_thread(
            self._objects.put, layout.image_set_done_key(name, pg, base), done.to_json()
        )
        self._metrics.inc("backup_image_sets_total")
        log.info("backup image set uploaded", segment=segment.id, base=base, pages=pages)

    def _base_records(self, segment: Segment, base: int) -> list[bytes]:
        """The segment's record at `base` and its SIZE records at or below it (thread)."""
        kept = []
        after = 0
        while True:
            records, more = self._store.read_records(
                segment, after, base, self._config.read_records_bytes_max
            )
            for record in records:
                header = redo.HEADER.unpack_from(record)
                if header[1] == base or header[6] == redo.KIND_SIZE:
                    kept.append(record)
            if not more or not records:
                return kept
            after = redo.HEADER.unpack_from(records[-1])[1]

    def _sealer(self, segment: Segment) -> Sealer:
        return self._store.sealer_of(segment.id.volume_id)

    async def _ensure_manifest(self, segment: Segment, name: str) -> None:
        if name in self._manifests_written:
            return
        manifest = layout.Manifest(
            volume_name=name,
            volume_id=segment.id.volume_id,
            pages_per_pg=segment.meta.page_count,
            cluster_id=self._config.backup_cluster_id,
            kms_url=getattr(self._config, "kms_url", "") or "",
            data_keys=getattr(self._config, "data_keys", "") or "",
        )
        key = layout.manifest_key(name)
        try:
            current = await asyncio.to_thread(self._objects.get, key)
        except NotFound:
            current = b""
        if current != manifest.to_json():
            await asyncio.to_thread(self._objects.put, key, manifest.to_json())
        self._manifests_written.add(name)

    async def _put_progress(self, segment: Segment, name: str, lsn: int) -> None:
        progress = layout.Progress(lsn, self._config.name, int(time.time() * US_PER_S))
        key = layout.progress_key(name, segment.id.pg)
        await asyncio.to_thread(self._objects.put, key, progress.to_json())
        self._progress_cache[segment.id] = (time.monotonic(), lsn)

    async def _get_progress(self, segment_id: SegmentId, name: str) -> int | None:
        try:
            data = await asyncio.to_thread(
                self._objects.get, layout.progress_key(name, segment_id.pg)
            )
        except NotFound:
            return None
        return layout.Progress.from_json(data).lsn

    # -- for garbage collection ----------------------------------------------------------------

    async def backed_up_lsn(self, segment: Segment) -> int:
        """Every record of the segment's PG at or below it is in the backup (0: none or
        unknown, so GC deletes nothing)."""
        cached = self._progress_cache.get(segment.id)
        if cached is not None and time.monotonic() - cached[0] < PROGRESS_CACHE_S:
            return cached[1]
        try:
            lsn = await self._get_progress(segment.id, self._name(segment.id.volume_id)) or 0
        except BorealisError as error:
            log.warning("backup progress unreadable; GC waits", segment=segment.id, error=error)
            return 0
        self._progress_cache[segment.id] = (time.monotonic(), lsn)
        return lsn

    # -- retention -----------------------------------------------------------------------------

    async def _retention(self, mine: list[Segment]) -> None:
        days = self._config.backup_retention_days
        if days <= 0 or not mine:
            return
        window_start_us = int(time.time() * US_PER_S - days * US_PER_DAY)
        for volume_id in sorted({segment.id.volume_id for segment in mine}):
            try:
                await self._retain_volume(volume_id, mine, window_start_us)
            except BorealisError as error:
                log.warning("backup retention failed", volume=volume_id, error=error)

    async def _retain_volume(
        self, volume_id: int, mine: list[Segment], window_start_us: int
    ) -> None:
        name = self._name(volume_id)
        keys = await asyncio.to_thread(self._objects.list, layout.volume_prefix(name) + "pgs/")
        image_sets: dict[int, list[layout.ImageSet]] = {}
        all_pgs = {layout.parse_pg(key) for key in keys}
        for key in keys:
            if key.endswith("/done.json"):
                data = await asyncio.to_thread(self._objects.get, key)
                image_sets.setdefault(layout.parse_pg(key), []).append(
                    layout.ImageSet.from_json(data)
                )
        keep = layout.retention_keep(image_sets, window_start_us)
        if not keep or set(keep) != all_pgs:
            return  # a PG has no image set old enough: its log is needed from the start
        # Snapshots and clones pin older history (borealis/backup_pins.py).
        pinned = await asyncio.to_thread(backup_pins.pinned_lsns, self._objects, name)
        keep = backup_pins.keep_pinned(keep, image_sets, pinned)
        floor = min(keep.values())
        doomed = []
        for segment in mine:
            if segment.id.volume_id != volume_id or segment.id.pg not in keep:
                continue
            prefix = layout.pg_prefix(name, segment.id.pg)
            own = [key for key in keys if key.startswith(prefix)]
            doomed += layout.retention_doomed(own, segment.id.pg, keep[segment.id.pg], floor)
        if doomed:
            # An image set's done.json goes first: a restore never picks a set whose
            # parts are being deleted.
            done = [key for key in doomed if key.endswith("/done.json")]
            await asyncio.to_thread(self._objects.delete, done)
            await asyncio.to_thread(self._objects.delete, [k for k in doomed if k not in done])
            self._metrics.inc("backup_objects_deleted_total", len(doomed))
            log.info("backup objects past retention deleted", volume=volume_id, count=len(doomed))
