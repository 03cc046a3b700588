"""An async client of one storage node, in domain types, with a deadline on every call.

Peers use it for gossip and repair, tests and benchmarks to drive nodes, and the
compute node's volume client to ship redo and read pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from borealis import rpc
from borealis.ids import Epochs, Lsn, SegmentId
from proto import admin_pb2, admin_pb2_grpc, storage_pb2, storage_pb2_grpc
from storage_node.convert import members_to_proto, segment_ref, state_of
from storage_node.segment import Member, SegmentMeta

MESSAGE_BYTES_MAX = 17 * 2**20


@dataclass(frozen=True, slots=True)
class AppendAck:
    scl: Lsn
    highest_lsn: Lsn
    records_new: int


def encode_append(segment_id: SegmentId, epochs: Epochs, records: list[bytes]) -> bytes:
    """An AppendRedo request serialized once, to send to all six segments."""
    request = storage_pb2.AppendRedoRequest(
        segment=segment_ref(segment_id, epochs), records=records
    )
    return request.SerializeToString()


class StorageClient:
    def __init__(
        self, address: str, timeout_s: float = 5.0, message_bytes_max: int = MESSAGE_BYTES_MAX
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = rpc.channel(address, message_bytes_max)
        self._stub = storage_pb2_grpc.StorageStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        # AppendRedo with an already serialized request (see encode_append).
        self._append_encoded = self._channel.unary_unary(
            "/borealis.storage.Storage/AppendRedo",
            request_serializer=None,
            response_deserializer=storage_pb2.AppendRedoResponse.FromString,
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> StorageClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    async def append(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        records: list[bytes],
        timeout_s: float | None = None,
    ) -> AppendAck:
        return await self.append_encoded(encode_append(segment_id, epochs, records), timeout_s)

    async def append_encoded(self, request: bytes, timeout_s: float | None = None) -> AppendAck:
        response = await rpc.call(
            self._append_encoded(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return AppendAck(Lsn(response.scl), Lsn(response.highest_lsn), response.records_new)

    async def get_page(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        page: int,
        lsn: int,
        timeout_s: float | None = None,
    ) -> tuple[bytes, Lsn]:
        request = storage_pb2.GetPageRequest(
            segment=segment_ref(segment_id, epochs), page=page, lsn=lsn
        )
        response = await rpc.call(
            self._stub.GetPage(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return response.image, Lsn(response.page_lsn)

    async def read_records(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        after_lsn: int,
        up_to_lsn: int,
        bytes_max: int = 4 * 2**20,
        timeout_s: float | None = None,
    ) -> tuple[list[bytes], bool, Lsn]:
        request = storage_pb2.ReadRecordsRequest(
            segment=segment_ref(segment_id, epochs),
            after_lsn=after_lsn,
            up_to_lsn=up_to_lsn,
            bytes_max=bytes_max,
        )
        response = await rpc.call(
            self._stub.ReadRecords(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return list(response.records), response.more, Lsn(response.scl)

    async def read_page_images(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        lsn: int,
        start_page: int = 0,
        bytes_max: int = 4 * 2**20,
        timeout_s: float | None = None,
    ) -> tuple[list[tuple[int, Lsn, bytes]], bool, int]:
        """([(page, page_lsn, image)], more, next_page): full images as of `lsn` of the
        pages from `start_page` on that have a version at or below it."""
        request = storage_pb2.ReadPageImagesRequest(
            segment=segment_ref(segment_id, epochs),
            lsn=lsn,
            start_page=start_page,
            bytes_max=bytes_max,
        )
        response = await rpc.call(
            self._stub.ReadPageImages(request, timeout=self._timeout(timeout_s)),
            node=self.address,
        )
        images = [(image.page, Lsn(image.page_lsn), image.image) for image in response.images]
        return images, response.more, response.next_page

    async def state(self, segment_id: SegmentId, timeout_s: float | None = None) -> SegmentMeta:
        request = storage_pb2.GetSegmentStateRequest(segment=segment_ref(segment_id, Epochs(0, 0)))  # type: ignore[arg-type]
        response = await rpc.call(
            self._stub.GetSegmentState(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return state_of(response)

    async def list_segments(self, timeout_s: float | None = None) -> list[SegmentMeta]:
        response = await rpc.call(
            self._stub.ListSegments(
                storage_pb2.ListSegmentsRequest(), timeout=self._timeout(timeout_s)
            ),
            node=self.address,
        )
        return [state_of(state) for state in response.segments]

    async def set_membership(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        first_page: int,
        page_count: int,
        members: list[Member],
        timeout_s: float | None = None,
        members_old: list[Member] | None = None,
        hydrate: bool = False,
    ) -> SegmentMeta:
        """Creates the segment or installs a member set at a new membership epoch.

        `members_old` is the set being replaced during a membership change (empty when
        it settles); `hydrate` makes a segment created by this call copy its pages
        and records from its peers instead of starting empty.
        """
        request = storage_pb2.SetMembershipRequest(
            segment=segment_ref(segment_id, epochs),
            first_page=first_page,
            page_count=page_count,
            members=members_to_proto(members),
            members_old=members_to_proto(members_old or []),
            hydrate=hydrate,
        )
        response = await rpc.call(
            self._stub.SetMembership(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return state_of(response)

    async def set_epoch(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        truncate: tuple[int, int] | None = None,
        timeout_s: float | None = None,
    ) -> SegmentMeta:
        """Raises the volume epoch; `truncate` = (above_lsn, up_to_lsn) deletes that range."""
        above, up_to = truncate or (0, 0)
        request = storage_pb2.SetEpochRequest(
            segment=segment_ref(segment_id, epochs),
            truncate=truncate is not None,
            truncate_above_lsn=above,
            truncate_up_to_lsn=up_to,
        )
        response = await rpc.call(
            self._stub.SetEpoch(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return state_of(response)

    async def set_pgmrpl(
        self, segment_id: SegmentId, epochs: Epochs, pgmrpl: int, timeout_s: float | None = None
    ) -> SegmentMeta:
        request = storage_pb2.SetPgmrplRequest(
            segment=segment_ref(segment_id, epochs), pgmrpl=pgmrpl
        )
        response = await rpc.call(
            self._stub.SetPgmrpl(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return state_of(response)

    # -- admin -------------------------------------------------------------------

    async def set_failpoint(self, name: str, action: str, timeout_s: float | None = None) -> None:
        request = admin_pb2.SetFailpointRequest(name=name, action=action)
        await rpc.call(
            self._admin.SetFailpoint(request, timeout=self._timeout(timeout_s)), node=self.address
        )

    async def run_task(self, task: str, timeout_s: float | None = None) -> str:
        request = admin_pb2.RunTaskRequest(task=task)
        response = await rpc.call(
            self._admin.RunTask(request, timeout=self._timeout(timeout_s)), node=self.address
        )
        return response.summary

    async def metrics(self, timeout_s: float | None = None) -> str:
        response = await rpc.call(
            self._admin.GetMetrics(admin_pb2.GetMetricsRequest(), timeout=self._timeout(timeout_s)),
            node=self.address,
        )
        return response.text
