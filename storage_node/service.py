"""The Storage gRPC service: request checks on the event loop, writes through the writer thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from grpc import aio

from borealis import faults, redo
from borealis.errors import Corruption, InvalidRequest, StaleEpoch, Unavailable, VersionGone
from borealis.ids import Epochs
from borealis.metrics import Metrics
from borealis.rpc import handler
from proto import storage_pb2, storage_pb2_grpc
from storage_node.config import StorageNodeConfig
from storage_node.convert import epochs_of, members_of, segment_id_of, state_to_proto
from storage_node.segment import Member, Segment, SegmentMeta
from storage_node.store import IncomingRecord, SegmentStore
from storage_node.writer import Writer

if TYPE_CHECKING:
    from storage_node.scrubber import Scrubber

KIND_SIZE = redo.KIND_SIZE


def check_batch(
    segment: Segment, records: list[bytes], config: StorageNodeConfig
) -> list[IncomingRecord]:
    """Checks every record of an AppendRedo batch (or a gossip fill) before anything is written."""
    if len(records) > config.append_batch_records_max:
        raise InvalidRequest(
            "batch has too many records",
            records=len(records),
            limit=config.append_batch_records_max,
        )
    first_page = segment.meta.first_page
    end_page = first_page + segment.meta.page_count
    checked: list[IncomingRecord] = []
    batch_bytes = 0
    last_lsn = 0
    check = redo.check
    for data in records:
        batch_bytes += len(data)
        _, lsn, _, prev_lsn_pg, _, page, kind, _, _, _ = check(data)
        if lsn <= last_lsn:
            raise InvalidRequest("LSNs must increase within a batch", lsn=lsn, previous=last_lsn)
        last_lsn = lsn
        if kind != KIND_SIZE and not first_page <= page < end_page:
            segment.check_page(page)
        checked.append((lsn, prev_lsn_pg, page, kind, data))
    if batch_bytes > config.append_batch_bytes_max:
        raise InvalidRequest(
            "batch is too large", bytes=batch_bytes, limit=config.append_batch_bytes_max
        )
    return checked


def check_read_point(segment: Segment, lsn: int) -> None:
    """Page reads must be at or above the PGMRPL and at or below the SCL, and never from a
    segment that is still hydrating (its images may be partial)."""
    if lsn < segment.pgmrpl:
        raise VersionGone(
            "read point is below the PGMRPL", segment=segment.id, lsn=lsn, pgmrpl=segment.pgmrpl
        )
    if segment.meta.hydrating or lsn > segment.scl:
        raise Unavailable(
            "segment is not complete to the read point",
            segment=segment.id,
            lsn=lsn,
            scl=segment.scl,
            hydrating=segment.meta.hydrating,
        )


def check_members(members: list[Member], what: str) -> None:
    if len({m.node for m in members}) != len(members):
        raise InvalidRequest(f"{what} must be distinct nodes")


class StorageService(storage_pb2_grpc.StorageServicer):
    def __init__(
        self, config: StorageNodeConfig, store: SegmentStore, writer: Writer, metrics: Metrics
    ) -> None:
        self._config = config
        self._store = store
        self._writer = writer
        self._metrics = metrics
        self._append_slots = asyncio.Semaphore(config.append_inflight_batches_max)
        self.scrubber: Scrubber | None = None
        # Called when a hydrating segment is created, so hydration starts at once.
        self.on_hydrating: Callable[[], None] | None = None

    def _segment(self, ref: storage_pb2.SegmentRef, check_epochs: bool = True) -> Segment:
        segment = self._store.segment(segment_id_of(ref))
        if check_epochs:
            try:
                segment.check_epochs(epochs_of(ref))
            except StaleEpoch:
                self._metrics.inc("stale_epoch_requests_total")
                raise
        return segment

    async def append(
        self, segment: Segment, records: list[bytes], epochs: Epochs | None = None
    ) -> tuple[int, int, int]:
        """Checks and persists records (from a writer or a peer); (scl, highest, new).

        `epochs` (the request's) are checked again in the writer thread, see op_append.
        """
        try:
            checked = check_batch(segment, records, self._config)
        except InvalidRequest:
            self._metrics.inc("invalid_requests_total", rpc="AppendRedo")
            raise
        async with self._append_slots:
            await faults.apoint("storage.append.before_write")
            try:
                scl, highest, new, new_bytes = await self._writer.run(
                    partial(self._store.op_append, segment=segment, records=checked, epochs=epochs)
                )
            except StaleEpoch:
                self._metrics.inc("stale_epoch_requests_total")
                raise
        if new:
            self._metrics.inc("records_appended_total", new)
            self._metrics.inc("record_bytes_appended_total", new_bytes)
        return scl, highest, new

    @handler
    async def AppendRedo(
        self, request: storage_pb2.AppendRedoRequest, context: aio.ServicerContext
    ) -> storage_pb2.AppendRedoResponse:
        segment = self._segment(request.segment)
        scl, highest, new = await self.append(
            segment, list(request.records), epochs_of(request.segment)
        )
        await faults.apoint("storage.append.before_ack")
        # A billed write request (control_plane/metering.py); gossip fills are not.
        self._metrics.inc("append_requests_total")
        return storage_pb2.AppendRedoResponse(scl=scl, highest_lsn=highest, records_new=new)

    @handler
    async def GetPage(
        self, request: storage_pb2.GetPageRequest, context: aio.ServicerContext
    ) -> storage_pb2.GetPageResponse:
        segment = self._segment(request.segment)
        segment.check_page(request.page)
        check_read_point(segment, request.lsn)
        await faults.apoint("storage.get_page")
        try:
            image, page_lsn = self._store.read_page(segment, request.page, request.lsn)
        except Corruption:
            self._corruption_found()
            raise
        self._metrics.inc("pages_read_total")
        return storage_pb2.GetPageResponse(image=image, page_lsn=page_lsn)

    @handler
    async def ReadPageImages(
        self, request: storage_pb2.ReadPageImagesRequest, context: aio.ServicerContext
    ) -> storage_pb2.ReadPageImagesResponse:
        segment = self._segment(request.segment)
        check_read_point(segment, request.lsn)
        bytes_max = min(
            request.bytes_max or self._config.read_records_bytes_max,
            self._config.read_records_bytes_max,
        )
        try:
            # Many pages, each materialised: off the event loop.
            images, more, next_page = await asyncio.to_thread(
                self._store.page_images, segment, request.lsn, request.start_page, bytes_max
            )
        except Corruption:
            self._corruption_found()
            raise
        # GC may have dropped versions below a PGMRPL raised during the read: the images
        # are good only if the read point was still at or above it at the end.
        check_read_point(segment, request.lsn)
        return storage_pb2.ReadPageImagesResponse(
            images=[
                storage_pb2.PageImage(page=page, page_lsn=page_lsn, image=image)
                for page, page_lsn, image in images
            ],
            more=more,
            next_page=next_page,
        )

    def _corruption_found(self) -> None:
        self._metrics.inc("crc_failures_total")
        if self.scrubber is not None:
            self.scrubber.wake()

    @handler
    async def ReadRecords(
        self, request: storage_pb2.ReadRecordsRequest, context: aio.ServicerContext
    ) -> storage_pb2.ReadRecordsResponse:
        segment = self._segment(request.segment)
        bytes_max = min(
            request.bytes_max or self._config.read_records_bytes_max,
            self._config.read_records_bytes_max,
        )
        if request.up_to_lsn < request.after_lsn:
            raise InvalidRequest(
                "up_to_lsn is below after_lsn", after=request.after_lsn, up_to=request.up_to_lsn
            )
        try:
            records, more = self._store.read_records(
                segment, request.after_lsn, request.up_to_lsn, bytes_max
            )
        except Corruption:
            self._corruption_found()
            raise
        return storage_pb2.ReadRecordsResponse(records=records, more=more, scl=segment.scl)

    @handler
    async def GetSegmentState(
        self, request: storage_pb2.GetSegmentStateRequest, context: aio.ServicerContext
    ) -> storage_pb2.SegmentState:
        return state_to_proto(self._segment(request.segment, check_epochs=False))

    @handler
    async def ListSegments(
        self, request: storage_pb2.ListSegmentsRequest, context: aio.ServicerContext
    ) -> storage_pb2.ListSegmentsResponse:
        segments = sorted(self._store.segments.values(), key=lambda s: (s.id.volume_id, s.id.pg))
        return storage_pb2.ListSegmentsResponse(segments=[state_to_proto(s) for s in segments])

    @handler
    async def SetMembership(
        self, request: storage_pb2.SetMembershipRequest, context: aio.ServicerContext
    ) -> storage_pb2.SegmentState:
        ref = request.segment
        members = members_of(list(request.members))
        members_old = members_of(list(request.members_old))
        if request.page_count == 0:
            raise InvalidRequest("a segment must cover at least one page")
        check_members(members, "members")
        check_members(members_old, "members_old")
        segment = self._store.segments.get(segment_id_of(ref))
        if segment is None:
            return state_to_proto(await self._create(request, members, members_old))
        meta = segment.meta
        if (request.first_page, request.page_count) != (meta.first_page, meta.page_count):
            raise InvalidRequest("a segment's page range cannot change", segment=segment.id)
        if ref.volume_epoch < meta.volume_epoch or ref.membership_epoch < meta.membership_epoch:
            self._metrics.inc("stale_epoch_requests_total")
            raise StaleEpoch(
                "membership change carries an older epoch",
                segment=segment.id,
                request_membership_epoch=ref.membership_epoch,
                segment_membership_epoch=meta.membership_epoch,
            )
        if ref.membership_epoch == meta.membership_epoch:
            if (members, members_old) != (meta.members, meta.members_old):
                raise InvalidRequest(
                    "membership epoch reused for a different member set", segment=segment.id
                )
            return state_to_proto(segment)

        def change(meta: SegmentMeta) -> None:
            # A settle call sends members_old empty: the change is over.
            meta.membership_epoch = ref.membership_epoch
            meta.members = members
            meta.members_old = members_old
            if request.hydrate:
                # It holds nothing any more: no record of an older epoch to keep out.
                meta.volume_epoch = ref.volume_epoch

        # The writer asks an existing segment to hydrate only when it joins the PG
        # again after a while out of it (a replacement retried after a rollback).
        operation = self._store.op_reset_for_hydration if request.hydrate else None
        await self._writer.run(
            partial(operation or self._store.op_update_meta, segment=segment, change=change)
        )
        if request.hydrate and self.on_hydrating is not None:
            self.on_hydrating()
        return state_to_proto(segment)

    async def hydrate_again(self, segment: Segment) -> None:
        """Drops what the segment holds and hydrates it from its peers, at its
        epochs and membership (gossip found it behind their garbage collection)."""
        await self._writer.run(
            partial(self._store.op_reset_for_hydration, segment=segment, change=lambda _: None)
        )
        if self.on_hydrating is not None:
            self.on_hydrating()

    async def _create(
        self,
        request: storage_pb2.SetMembershipRequest,
        members: list[Member],
        members_old: list[Member],
    ) -> Segment:
        ref = request.segment
        meta = SegmentMeta(
            volume_id=ref.volume_id,
            pg=ref.pg,
            first_page=request.first_page,
            page_count=request.page_count,
            volume_epoch=ref.volume_epoch,
            membership_epoch=ref.membership_epoch,
            members=members,
            members_old=members_old,
            hydrating=request.hydrate,
        )
        segment: Segment = await self._writer.run(partial(self._store.op_create, meta=meta))
        if meta.hydrating and self.on_hydrating is not None:
            self.on_hydrating()
        return segment

    @handler
    async def SetEpoch(
        self, request: storage_pb2.SetEpochRequest, context: aio.ServicerContext
    ) -> storage_pb2.SegmentState:
        ref = request.segment
        segment = self._segment(ref, check_epochs=False)
        if (
            ref.volume_epoch < segment.meta.volume_epoch
            or ref.membership_epoch != segment.meta.membership_epoch
        ):
            self._metrics.inc("stale_epoch_requests_total")
            raise StaleEpoch(
                "epoch change refused",
                segment=segment.id,
                request_volume_epoch=ref.volume_epoch,
                segment_volume_epoch=segment.meta.volume_epoch,
                request_membership_epoch=ref.membership_epoch,
                segment_membership_epoch=segment.meta.membership_epoch,
            )
        if request.truncate and request.truncate_up_to_lsn < request.truncate_above_lsn:
            raise InvalidRequest("truncation range is empty or reversed")

        truncate = None
        if request.truncate:
            truncate = (request.truncate_above_lsn, request.truncate_up_to_lsn)
        await self._writer.run(
            partial(
                self._store.op_set_epoch,
                segment=segment,
                volume_epoch=ref.volume_epoch,
                truncate=truncate,
            )
        )
        return state_to_proto(segment)

    @handler
    async def SetPgmrpl(
        self, request: storage_pb2.SetPgmrplRequest, context: aio.ServicerContext
    ) -> storage_pb2.SegmentState:
        segment = self._segment(request.segment)
        if request.pgmrpl > segment.pgmrpl:

            def change(meta: SegmentMeta) -> None:
                # The PGMRPL only moves forward: a lower value is a late message.
                meta.pgmrpl = max(meta.pgmrpl, request.pgmrpl)

            await self._writer.run(
                partial(self._store.op_update_meta, segment=segment, change=change)
            )
        return state_to_proto(segment)
